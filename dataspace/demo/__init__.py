"""The one-command demo of the data space (issue 7): :func:`run_demo`."""

from dataspace.demo.orchestrate import DemoError, DemoOptions, DemoResult, run_demo

__all__ = ["DemoError", "DemoOptions", "DemoResult", "run_demo"]
