"""The consumer's side of a run's value: held-out loss on its own episodes, and
each dataset's contribution (GTG-Shapley).

The code lives in :mod:`dataspace.quality.contribution` (one code path for the
demo, ``dataspace train --validation`` and bench/value_detect.py); this module
keeps the demo's import names.
"""

from __future__ import annotations

from dataspace.quality.contribution import CONTRIBUTION, Validation, run_contributions

__all__ = ["CONTRIBUTION", "Validation", "run_contributions"]
