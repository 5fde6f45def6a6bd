"""Federated training: Flower ServerApp/ClientApp, DP-SGD, model templates.

The front door is :func:`train`: a :class:`RunSpec` (what to train, on which
contracts) run on an engine chosen by name from :data:`ENGINES` or given as an
object with its options::

    from dataspace.federated import RunSpec, train
    history = train(RunSpec(contracts=ids, out_dir="runs/r1"), sites, "deployment")

Apps (what runs) are kept apart from the engines (how they run):

* apps: :mod:`.client_app` (the connector's own ClientApp: the site fixes the
  mechanism, every release charged via :mod:`.guard` by the ledger's privacy
  filter before any read, DP statistics once per contract, DP-SGD, DP losses, one
  evaluation per round; docs/threat-model.md) with its mods beside it
  (:mod:`.egress`: the egress guard; :mod:`.secagg`: SecAgg+), :mod:`.server_app`
  (weighted FedAvg, per-round evaluation, run directory with per-round global
  models and per-site updates, resume);
* building blocks: :mod:`.spec` (the run spec), :mod:`.templates` (model registry:
  ``bc-mlp``, ``bc-chunk``), :mod:`.data` (site store to tensors, hash-based held-out
  split), :mod:`.normalize` (DP statistics), :mod:`.public_stats` (the consumer's
  public statistics: no stats release, plan without it), :mod:`.dp` (privacy plan with
  :mod:`dataspace.accountant`, book-keeping clipping and Opacus modes), :mod:`.noise`
  (the site's secret ChaCha20 noise, fresh for every release);
* engines: :mod:`.engines` (:func:`train`), :mod:`.local_grid` (one process),
  :mod:`.deploy` (SuperLink + SuperNodes, TLS, node auth; keys from :mod:`.pki`),
  :mod:`.site_worker` (warm per-site worker behind a lean ClientApp), :mod:`.fab`
  (FAB signatures in Flower's format), :mod:`.remote` (:class:`~.remote.HubEngine`:
  the consumer's run through the hub's SuperLink, from its own machine) and
  :mod:`.rundir` (where a run may write on the hub's host, what of it is served);
* outputs: :mod:`.report`, :mod:`.contribution` (each dataset's contribution to a
  run, GTG-Shapley, and a revenue split), :mod:`.export` (the policy in LeRobot's
  layout, ``DIR/lerobot/``) and :mod:`.inference` (``dataspace.load_policy``).
"""

from typing import TYPE_CHECKING

from dataspace import lazy

if TYPE_CHECKING:
    from dataspace.federated.engines import (
        ENGINES,
        DeploymentEngine,
        SimulationEngine,
        UnknownEngineError,
        train,
    )
    from dataspace.federated.spec import RunSpec

__all__ = [
    "ENGINES",
    "DeploymentEngine",
    "RunSpec",
    "SimulationEngine",
    "UnknownEngineError",
    "train",
]


# heavy (torch, Opacus, Flower): the front door is loaded on first use (dataspace.lazy),
# not when any submodule is: the lean ClientApp (site_worker) and the SuperExecs import
# submodules of this package in processes that must not pay for torch and Opacus.
__getattr__ = lazy.exports(
    __name__,
    {
        "ENGINES": "dataspace.federated.engines",
        "DeploymentEngine": "dataspace.federated.engines",
        "RunSpec": "dataspace.federated.spec",
        "SimulationEngine": "dataspace.federated.engines",
        "UnknownEngineError": "dataspace.federated.engines",
        "train": "dataspace.federated.engines",
    },
)
