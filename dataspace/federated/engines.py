"""Training's one front door: :func:`train` a :class:`RunSpec` on an engine.

The engines run the same apps (:mod:`.server_app`, :mod:`.client_app`) and differ only
in how messages travel:

* ``simulation`` (:class:`SimulationEngine`): one process, an in-process ``Grid``
  (:mod:`.local_grid`); a run is a pure function of its inputs and seed;
* ``deployment`` (:class:`DeploymentEngine`): Flower's deployment engine, a SuperLink
  and one SuperNode per site as processes, TLS and node authentication (:mod:`.deploy`).

Variants are chosen by name from :data:`ENGINES` (as Opacus chooses an accountant)
or by passing an engine object with its options.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from dataspace.errors import DataspaceError
from dataspace.federated.deploy import Deployment, DeploymentError, write_app
from dataspace.federated.local_grid import LocalGrid
from dataspace.federated.server_app import run_training
from dataspace.federated.spec import RunSpec
from dataspace.site import Site

OnRound = Callable[[dict[str, Any]], None]


class UnknownEngineError(DataspaceError):
    """An engine name that :data:`ENGINES` does not hold."""

    exit_code = 2


class Engine(Protocol):
    name: str

    def run(self, spec: RunSpec, sites: list[Path], on_round: OnRound | None) -> dict[str, Any]:
        """Run ``spec`` on ``sites``; returns the run's history (see :mod:`.server_app`)."""
        ...


@dataclass
class SimulationEngine:
    """In this process. ``grid``: a grid of your own (tests inject faults through it)."""

    grid: LocalGrid | None = None
    name = "simulation"

    def run(self, spec: RunSpec, sites: list[Path], on_round: OnRound | None) -> dict[str, Any]:
        # the ClientApp module builds the app at import (heavy: torch, Opacus)
        from dataspace.federated.client_app import app as client_app

        spec = spec.completed(len(sites), fold_evaluate=False, pack_arrays=False)
        # nothing to wait for: every node of the in-process grid is there from the start
        spec.connect_timeout = min(spec.connect_timeout, 1.0)
        grid = self.grid or LocalGrid(client_app, sites)
        torch.manual_seed(spec.seed)
        return run_training(grid, spec, on_round)


@dataclass
class DeploymentEngine:
    """A SuperLink and one SuperNode per site on this machine, as processes.

    ``timeout``: the whole run's limit in seconds; ``guarded_sites``: sites whose
    SuperNode runs with the egress guard in front (``guard_trust`` its trusted keys);
    the rest are :class:`.deploy.Deployment`'s options.
    """

    timeout: float = 900.0
    trusted_entities: Path | None = None
    warm: bool = True
    guarded_sites: Sequence[Path] = ()
    guard_trust: Path | None = None
    isolation: str = "process"
    fast_poll: bool = True
    database: str | None = None
    name = "deployment"

    def run(self, spec: RunSpec, sites: list[Path], on_round: OnRound | None) -> dict[str, Any]:
        # one message per site per round: evaluation rides in the next train message
        spec = spec.completed(len(sites), fold_evaluate=True, pack_arrays=True)
        spec.expected_nodes = (spec.expected_nodes or 0) + len(self.guarded_sites)
        out = Path(spec.out_dir).resolve()
        spec.out_dir = str(out)
        app_dir = write_app(out / "deploy" / "app")
        dep = Deployment(
            out / "deploy",
            sites,
            self.trusted_entities,
            warm=self.warm,
            guarded_sites=self.guarded_sites,
            guard_trust=self.guard_trust,
            isolation=self.isolation,
            fast_poll=self.fast_poll,
            database=self.database,
        )
        t0 = time.perf_counter()
        with dep as d:
            t1 = time.perf_counter()
            d.run(app_dir, spec.run_config(), timeout=self.timeout)
            t2 = time.perf_counter()
        hist = out / "history.json"
        if not hist.exists():
            raise DeploymentError(f"the run wrote no history; see {out / 'deploy' / 'logs'}")
        history = json.loads(hist.read_text())
        # not written to history.json: engine timings for benchmarks
        history["timing"] = {
            "start_s": t1 - t0, "run_s": t2 - t1, "total_s": time.perf_counter() - t0,
        }  # fmt: skip
        if on_round is not None:  # the rounds happened in the hub worker's process
            for r in history.get("rounds", []):
                on_round(r)
        return history


#: engines by name, each with its default options
ENGINES: dict[str, type[SimulationEngine] | type[DeploymentEngine]] = {
    "simulation": SimulationEngine,
    "deployment": DeploymentEngine,
}


def train(
    spec: RunSpec,
    sites: Sequence[Path | str | Site],
    engine: str | Engine = "simulation",
    on_round: OnRound | None = None,
) -> dict[str, Any]:
    """Train ``spec`` across ``sites`` on ``engine`` (a name in :data:`ENGINES`, or an
    engine object with its options); writes the run directory ``spec.out_dir`` and
    returns the run's history. ``on_round`` sees each completed round's record."""
    if isinstance(engine, str):
        if engine not in ENGINES:
            raise UnknownEngineError(f"unknown engine {engine!r} (expected {', '.join(ENGINES)})")
        engine = ENGINES[engine]()
    roots = [s.root if isinstance(s, Site) else Path(s).resolve() for s in sites]
    return engine.run(spec, roots, on_round)
