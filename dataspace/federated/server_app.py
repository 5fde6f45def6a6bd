"""The ServerApp: weighted FedAvg over the contracts' sites, with DP or public normalisation.

One run (Flower 1.42 ``@app.main()`` with a ``Grid``):

0. ``query.stats`` to every site: DP sums, pooled into the model's
   normalisation buffers (:mod:`.normalize`). Or, when the consumer gives
   public statistics (run config ``public-stats``, :mod:`.public_stats`), no
   message at all: the buffers are set from them, every message's config says
   ``stats = "public"`` and carries them, and the sites release nothing for
   statistics (``history.json`` ``stats.source``: ``"dp"`` or ``"public"``);
1. each round: ``train`` to every connected site, weighted FedAvg of the
   replies (``flwr.serverapp.strategy.FedAvg.aggregate_train``, weights =
   ``num-examples``; when the sites mix privacy units, frames and episodes,
   every site is weighed in frames instead: its ``num-frames``, catalog
   metadata), then ``evaluate`` on every site's held-out episodes (their MSEs
   weighed the same way: held-out units, or ``eval-frames`` when units are mixed).
   With ``fold-evaluate`` (the deployment engine's default) round r's
   evaluation travels in round r+1's ``train`` message (config
   ``evaluate-round``; the reply carries ``eval-mse``), so a round is one
   message per site; the last round gets an ``evaluate`` message.

Everything is written to the run directory as it happens, so a run that stops
(a site refused, too few sites replied, a crash) can be resumed from its last
completed round::

    OUT/stats.json                       pooled statistics and round-0 epsilon
    OUT/rounds/NNN/global.npz            global model after round NNN
    OUT/rounds/NNN/updates/<site>.npz    each site's reply (for GTG-Shapley / LOO)
    OUT/rounds/NNN/round.json            loss, held-out MSE, epsilon per dataset
    OUT/history.json                     all of it, plus the run's spec and outcome

A site that dies mid-round does not hang the run: replies are awaited at most
``round-timeout`` seconds; the round completes with the sites that answered if
they are at least ``min-nodes``, otherwise the run stops with a clear message.
Epsilon is charged at the sites for every round they started.

Secure aggregation (run config ``secagg``): Flower's SecAgg+ protocol, ported
to these Message-API apps in :mod:`.secagg` (Flower 1.42 offers it only with
its legacy API); the server then sees only the weighted sum of the sites'
updates, and no per-site update is kept. Updates are DP at the sample level
either way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from dataspace.errors import DataspaceError
from dataspace.federated import packing, public_stats, rundir, secagg
from dataspace.federated.latency import fast_object_pulls
from dataspace.federated.normalize import (
    NoisySums,
    Stats,
    StatsFormatError,
    apply_stats,
    combine,
)
from dataspace.federated.spec import RunSpec
from dataspace.federated.templates import get_template

app = ServerApp()


class RunError(DataspaceError):
    """A run that cannot go on (too few sites, every site refused).

    ``replied``: the sites whose replies came in for the step that stopped the run
    (:func:`_site_of` records); ``failed``: the failures (node, reason). Both go into
    ``history.json`` (``stopped``), so a consumer can name the sites that took no part.
    """

    def __init__(
        self, message: str, *, replied: list[dict] | None = None, failed: list[dict] | None = None
    ) -> None:
        super().__init__(message)
        self.replied = replied or []
        self.failed = failed or []


@app.main()
def main(grid: Grid, context: Context) -> None:
    # deployment engine: replies whose objects are still uploading are retried after
    # 20 ms, not Flower's 1, 2, 4 ... s (see dataspace.federated.latency)
    from flwr.superlink.grid import http_grid

    fast_object_pulls(http_grid)
    run_training(grid, RunSpec.from_config(dict(context.run_config)))


def _wait_nodes(grid: Grid, spec: RunSpec, rnd: int) -> list[int]:
    # every expected site before statistics (up to connect-timeout: a site that is
    # offline then is left out if min-nodes others are there); afterwards min-nodes
    want = max(spec.min_nodes, spec.expected_nodes) if rnd == 0 else spec.min_nodes
    deadline = time.monotonic() + spec.connect_timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want:
            return nodes
        if time.monotonic() > deadline:
            if len(nodes) >= spec.min_nodes:
                return nodes
            raise RunError(
                f"only {len(nodes)} of {want} sites connected in {spec.connect_timeout}s",
                failed=[{"reason": f"{want - len(nodes)} site(s) never connected"}],
            )
        time.sleep(0.2)


#: seconds between pulls for replies (Flower 1.42's ``Grid.send_and_receive`` sleeps 3 s)
PULL_INTERVAL = 0.05


def send_and_receive(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """``Grid.send_and_receive`` with a short pull interval: a reply is seen within 50 ms."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(PULL_INTERVAL)
    return replies


def _exchange(
    grid: Grid, spec: RunSpec, kind: str, content: RecordDict, rnd: int, mark: Path | None = None
) -> tuple[list[Message], list[dict]]:
    """Send ``content`` to every connected site; (replies ok, failures), by node id.

    ``mark``: a file touched just before the messages go out (:func:`last_attempted_round`).
    """
    nodes = _wait_nodes(grid, spec, rnd)
    if mark is not None:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
    msgs = [Message(content, dst_node_id=n, message_type=kind, group_id=str(rnd)) for n in nodes]
    replies = sorted(
        send_and_receive(grid, msgs, spec.round_timeout), key=lambda m: m.metadata.src_node_id
    )
    # aggregate in dataset order, not node-id order: node ids differ between engines
    # and float sums depend on order, so both engines give bit-identical models
    ok = sorted(
        (m for m in replies if not m.has_error()),
        key=lambda m: str(m.content["info"]["dataset-id"]) if "info" in m.content else "",
    )
    answered = {m.metadata.src_node_id for m in replies}
    failed = [
        {"node": m.metadata.src_node_id, "reason": m.error.reason} for m in replies if m.has_error()
    ] + [
        {"node": n, "reason": f"no reply in {spec.round_timeout}s"}
        for n in nodes
        if n not in answered
    ]
    # a dataset id names the site's update file in the run directory: one that could
    # name another path (a hostile site's "../x") is a failed reply, never a file
    bad = [m for m in ok if not rundir.safe_dataset_file(_dataset_of(m))]
    ok = [m for m in ok if m not in bad]
    failed += [
        {"node": m.metadata.src_node_id, "reason": f"malformed dataset id {_dataset_of(m)!r}"}
        for m in bad
    ]
    if len(ok) < spec.min_nodes:
        why = "; ".join(f"node {f['node']}: {f['reason']}" for f in failed)
        raise RunError(
            f"{kind} round {rnd}: {len(ok)} of {len(nodes)} sites replied, "
            f"{spec.min_nodes} needed ({why})",
            replied=[_site_of(m) for m in ok],
            failed=failed,
        )
    return ok, failed


def _dataset_of(m: Message) -> str:
    """The dataset id a reply names ("" when it names none)."""
    try:
        return str(m.content["info"]["dataset-id"])
    except (KeyError, TypeError):
        return ""


def _site_of(m: Message) -> dict[str, str]:
    info = m.content["info"]
    site = {k: str(info[k]) for k in ("site", "dataset-id", "contract-id", "fingerprint")}
    # the site's privacy unit (its own setting, dataspace.federated.dp); older sites: frame
    site["privacy_unit"] = str(info.get("privacy-unit", "frame"))
    site["stats"] = str(info.get("stats", "dp"))
    site["normalisation"] = str(info.get("normalisation", "own"))
    return site


def _save_arrays(path: Path, arrays: ArrayRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: arrays[k].numpy() for k in arrays})
    tmp.replace(path)


def load_arrays(path: Path) -> ArrayRecord:
    with np.load(path) as z:
        import torch

        return ArrayRecord({k: torch.from_numpy(z[k].copy()) for k in z.files})


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def last_completed_round(out: Path) -> int:
    done = [int(p.parent.name) for p in (out / "rounds").glob("*/round.json")]
    return max(done, default=0)


def last_attempted_round(out: Path) -> int:
    """The last round whose messages may have gone out (``rounds/NNN/attempted``).

    A site executes a (run, round) at most once, so a resumed run never sends an
    attempted round again: the sites that charged it would refuse it.
    """
    tried = [int(p.parent.name) for p in (out / "rounds").glob("*/attempted")]
    return max(tried, default=0)


def run_training(
    grid: Grid, spec: RunSpec, on_round: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) the whole training; returns the history written to OUT.

    ``on_round`` is called with each completed round's record (progress display).
    """
    # a spec that leaves the engine's choices open runs as Flower's defaults would
    spec = spec.completed(spec.min_nodes or 1, fold_evaluate=False, pack_arrays=False)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = get_template(spec.template)
    history: dict[str, Any] = {"spec": asdict(spec), "rounds": [], "status": "running"}
    if (out / "history.json").exists():
        prev = json.loads((out / "history.json").read_text())
        history["rounds"] = [r for r in prev.get("rounds", []) if r.get("round", 0) >= 1]
        history["stats"] = prev.get("stats")
    start = last_completed_round(out)
    history["rounds"] = [r for r in history["rounds"] if r["round"] <= start]
    history["stats_source"] = spec.stats_source
    try:
        public = spec.public()  # malformed numbers stop the run before any message
        if public is not None and spec.secagg and not spec.secagg_max_weight:
            # SecAgg+'s weight range comes from the DP counts of the statistics round
            raise RunError(
                "SecAgg+ with public statistics needs secagg-max-weight (at least 1.5 x the "
                "largest site's example count): there is no statistics round to size it"
            )
        if start == 0 or not (out / "stats.json").exists():
            if public is None:
                arrays = _stats_round(grid, spec, template, out, history)
            else:
                arrays = _public_stats_round(spec, template, public, out, history)
            start = 0
        else:
            arrays = load_arrays(out / "rounds" / f"{start:03d}" / "global.npz")
            history["resumed_from"] = start
        strategy = FedAvg(min_train_nodes=spec.min_nodes, min_evaluate_nodes=spec.min_nodes)
        # rounds sent but never completed (a crash) stay lost: their charges stand
        first = max(start, last_attempted_round(out)) + 1
        if first > start + 1:
            history["lost_rounds"] = list(range(start + 1, first))
        for rnd in range(first, spec.rounds + 1):
            arrays = _train_round(grid, spec, strategy, arrays, rnd, out, history)
            if on_round and not spec.fold_evaluate:
                on_round(history["rounds"][-1])
            elif on_round and rnd > first:
                on_round(history["rounds"][-2])  # its evaluation came with this round
        if spec.fold_evaluate and spec.rounds >= first:
            _evaluate_round(grid, spec, arrays, spec.rounds, out, history)
            if on_round:
                on_round(history["rounds"][-1])
        history["status"] = "finished"
        _save_arrays(out / "final.npz", arrays)
    except DataspaceError as e:
        history["status"] = "stopped"
        history["error"] = str(e)
        if isinstance(e, RunError):  # who replied to the step that stopped, who failed
            history["stopped"] = {"replied": e.replied, "failed": e.failed}
        raise
    finally:
        _write_json(out / "history.json", history)
    return history


def _stats_round(grid, spec, template, out, history) -> ArrayRecord:
    content = RecordDict({"config": spec.config(0)})
    ok, failed = _exchange(grid, spec, "query.stats", content, 0)
    parts, sites, dims = [], [], set()
    for m in ok:
        s = m.content["sums"]
        dims.add((int(s["state-dim"]), int(s["action-dim"])))
        try:  # a site's reply is checked, never trusted: widths, finite numbers, bounds
            parts.append(NoisySums.from_lists(s, int(s["state-dim"]) + int(s["action-dim"])))
        except StatsFormatError as e:
            raise RunError(
                f"site {_dataset_of(m)!r} sent malformed statistics: {e}",
                replied=[_site_of(r) for r in ok],
                failed=failed,
            ) from None
        site = _site_of(m) | {
            "epsilon": float(m.content["metrics"]["epsilon-spent"]),
            "count": float(s["count"]),  # DP count: sizes SecAgg+'s weight range
        }
        sites.append(site)
    if len(dims) != 1:
        raise RunError(f"sites disagree on state/action dimensions: {sorted(dims)}")
    (s_dim, a_dim) = dims.pop()
    if spec.secagg and len({s["privacy_unit"] for s in sites}) > 1:
        # the first moment the server learns the units (the replies' info): before any
        # train message, but the statistics were released and charged (round 0)
        raise RunError(
            f"{_MIXED_SECAGG} (refused after the statistics query, before any training: "
            "each site has charged its statistics, round 0)"
        )
    pooled = combine(parts, s_dim)
    record = {
        "source": "dp",
        "state_dim": s_dim,
        "action_dim": a_dim,
        "sites": sites,
        "failed": failed,
        "epsilon": {s["dataset-id"]: s["epsilon"] for s in sites},
        # sent with every later message: the sites train in the global model's coordinates
        "pooled": public_stats.to_lists(pooled),
    }
    return _initial_model(spec, template, pooled, record, out, history)


def _initial_model(spec, template, stats: Stats, record: dict, out, history) -> ArrayRecord:
    """Round 0's global model: the template's initial weights with ``stats`` as its
    normalisation; ``record`` (what the statistics were) goes into the history."""
    policy = template.build(record["state_dim"], record["action_dim"], seed=spec.seed)
    apply_stats(policy, stats)
    arrays = ArrayRecord(policy.state_dict())
    history["stats"] = record
    _write_json(out / "stats.json", record)
    _save_arrays(out / "rounds" / "000" / "global.npz", arrays)
    return arrays


def _public_stats_round(spec, template, public: Stats, out, history) -> ArrayRecord:
    """Round 0 with the consumer's public statistics: no message, no site releases anything.

    The dimensions are the statistics' own; each site checks them against its
    dataset (and refuses the run, charging nothing, when they differ).
    """
    record = {
        "source": "public",
        "state_dim": len(public.state_mean),
        "action_dim": len(public.action_mean),
        "sites": [],
        "failed": [],
        "epsilon": {},
        "public": public_stats.to_lists(public),
    }
    return _initial_model(spec, template, public, record, out, history)


def _keep_buffers(new: ArrayRecord, prev: ArrayRecord) -> ArrayRecord:
    """``new`` with the normalisation buffers of ``prev`` (round 0's statistics) exactly.

    The sites never use the server's buffers (each normalises with its own DP
    statistics or the run's public ones) and echo them unchanged; FedAvg's
    weighted mean of equal float32 buffers can still move them by a rounding step
    (SecAgg+ by its quantisation), so the global model keeps round 0's exactly.
    """
    import torch

    state = new.to_torch_state_dict()
    for name in public_stats.FIELDS:
        state[name] = torch.from_numpy(prev[name].numpy().copy())
    return ArrayRecord(state)


_MIXED_SECAGG = (
    "the sites mix privacy units (frame and episode): their FedAvg weights count different "
    "things, and under SecAgg+ the server cannot weigh them in frames; run without --secagg "
    "or with sites of one privacy unit"
)


def _frame_weights(ok: list[Message]) -> dict[str, int]:
    """FedAvg weights per dataset: ``num-examples``, or ``num-frames`` when units are mixed.

    A frame site counts frames, an episode site episodes (:mod:`.client_app`):
    mixing them would weigh a site of 20 episodes like one of 20 frames. Then
    every site is weighed by its ``num-frames`` (train frames, or train
    episodes x the dataset's mean frames per episode; catalog metadata either
    way), which the update's privacy does not depend on (post-processing).
    """
    weights = _unit_weights(ok, "num-examples", "num-frames", "its update")
    return {d: int(w) for d, w in weights.items()}


def _unit_weights(ok: list[Message], own: str, frames: str, what: str) -> dict[str, float]:
    """Per dataset: the metric ``own`` (counted in the site's privacy unit), or ``frames``
    when the replies mix units; a reply without it in a mixed round is a RunError."""
    units = {_site_of(m)["privacy_unit"] for m in ok}
    key = frames if len(units) > 1 else own
    weights = {}
    for m in ok:
        met = m.content["metrics"]
        if key not in met:
            raise RunError(
                f"site {_site_of(m)['site']} reports no {key}: the sites mix privacy units "
                f"({', '.join(sorted(units))}) and {what} cannot be weighed in frames"
            )
        weights[_site_of(m)["dataset-id"]] = float(met[key])
    return weights


def _weighted(ok: list[Message], key: str) -> float:
    w = [float(m.content["metrics"]["num-examples"]) for m in ok]
    v = [float(m.content["metrics"][key]) for m in ok]
    return float(np.dot(w, v) / max(sum(w), 1e-12))


def _eval_weights(ok: list[Message], key: str = "eval-examples") -> dict[str, float]:
    """Weights of the sites' held-out MSEs per dataset: ``key`` (the site's own unit),
    or ``eval-frames`` when the replies mix privacy units (as :func:`_frame_weights`
    for training: held-out frames, or held-out episodes x mean frames per episode)."""
    return _unit_weights(ok, key, "eval-frames", "its held-out MSE")


def _eval_mse(ok: list[Message], key: str = "eval-examples") -> tuple[float, dict[str, float]]:
    """The round's held-out MSE: the weighted mean of the sites' (:func:`_eval_weights`)."""
    weights = _eval_weights(ok, key)
    w = [weights[_site_of(m)["dataset-id"]] for m in ok]
    v = [float(m.content["metrics"]["eval-mse"]) for m in ok]
    return float(np.dot(w, v) / max(sum(w), 1e-12)), weights


def _wire(spec: RunSpec, arrays: ArrayRecord) -> ArrayRecord:
    """The model as sent to the sites: one flat tensor when ``pack-arrays``."""
    return packing.pack(arrays) if spec.pack_arrays and not spec.secagg else arrays


def _set_eval(out: Path, history: dict, rnd: int, ev_ok: list[Message], ev_failed: list) -> None:
    """Fill round ``rnd``'s held-out MSE (replies carry ``eval-mse``) and rewrite its files."""
    record = next(r for r in history["rounds"] if r["round"] == rnd)
    ok = [m for m in ev_ok if "eval-mse" in m.content["metrics"]]
    if ok:
        try:
            record["eval_mse"], record["eval_weights"] = _eval_mse(ok)
        except RunError as e:
            ok, ev_failed = [], [*ev_failed, {"reason": str(e)}]
    record["eval_mse_per_dataset"] = {
        _site_of(m)["dataset-id"]: float(m.content["metrics"]["eval-mse"]) for m in ok
    }
    record["eval_failed"] = ev_failed
    _write_json(out / "rounds" / f"{rnd:03d}" / "round.json", record)
    _write_json(out / "history.json", history)


def _round_config(spec: RunSpec, rnd: int, history: dict[str, Any]) -> ConfigRecord:
    """A train or evaluate message's config: the spec's, and in a DP-stats run the pooled
    statistics of its statistics round (:func:`.public_stats.pooled_from_config`)."""
    config = spec.config(rnd)
    pooled = (history.get("stats") or {}).get("pooled")
    if spec.stats_source == "dp" and pooled:
        stats = public_stats.check_stats(pooled, where="stats.json pooled")
        for k, v in public_stats.to_config(stats, source="dp").items():
            config[k] = v
    return config


def _evaluate_round(grid, spec, arrays, rnd, out, history) -> None:
    """The last round's evaluation when evaluation is folded into train messages."""
    content = RecordDict(
        {"arrays": _wire(spec, arrays), "config": _round_config(spec, rnd, history)}
    )
    try:
        ev_ok, ev_failed = _exchange(grid, spec, "evaluate", content, rnd)
        for m in ev_ok:  # plain evaluate replies weigh by num-examples
            met = m.content["metrics"]
            met["eval-examples"] = met["num-examples"]
    except RunError as e:
        ev_ok, ev_failed = [], [{"reason": str(e)}]
    _set_eval(out, history, rnd, ev_ok, ev_failed)


def _secagg_round(grid, spec, content, rnd, history) -> tuple[list[Message], list, ArrayRecord]:
    """A train round under SecAgg+: (replies without updates, failures, new global model)."""
    nodes = _wait_nodes(grid, spec, rnd)
    max_weight = spec.secagg_max_weight or 1.5 * max(
        (float(s.get("count", 0.0)) for s in history["stats"]["sites"]), default=0.0
    )
    try:
        new, replies, failures = secagg.train_round(
            lambda msgs: send_and_receive(grid, msgs, spec.round_timeout),
            nodes,
            content,
            rnd,
            max_weight=max(max_weight, 10.0),
            clipping_range=spec.secagg_clipping_range,
            seed=spec.seed * 100_003 + rnd,
        )
    except secagg.SecAggError as e:
        raise RunError(str(e)) from e
    if len(replies) < spec.min_nodes:
        raise RunError(
            f"train round {rnd}: {len(replies)} of {len(nodes)} sites replied under SecAgg+, "
            f"{spec.min_nodes} needed ({failures})"
        )
    ok = sorted(replies, key=lambda m: str(m.content["info"]["dataset-id"]))
    return ok, failures, new


def _train_round(grid, spec, strategy, arrays, rnd, out, history) -> ArrayRecord:
    t0 = time.perf_counter()
    rdir = out / "rounds" / f"{rnd:03d}"
    attempted = rdir / "attempted"  # a resume never sends this round again
    config = _round_config(spec, rnd, history)
    folded = spec.fold_evaluate and any(r["round"] == rnd - 1 for r in history["rounds"])
    if folded:
        config["evaluate-round"] = rnd - 1
    if spec.secagg:
        content = RecordDict({"arrays": arrays, "config": config})
        attempted.parent.mkdir(parents=True, exist_ok=True)
        attempted.touch()
        ok, failed, new_arrays = _secagg_round(grid, spec, content, rnd, history)
    else:
        content = RecordDict({"arrays": _wire(spec, arrays), "config": config})
        ok, failed = _exchange(grid, spec, "train", content, rnd, mark=attempted)
        for m in ok:  # replies come in the form sent
            if packing.is_packed(m.content["arrays"]):
                m.content["arrays"] = packing.unpack(m.content["arrays"], arrays)
    if folded:
        _set_eval(out, history, rnd - 1, ok, [])
    if spec.secagg and len({_site_of(m)["privacy_unit"] for m in ok}) > 1:
        # public statistics: no statistics round told the units earlier
        raise RunError(
            f"{_MIXED_SECAGG} (refused after train round {rnd}, which each site has charged; "
            "its aggregate is discarded)"
        )
    weights = _frame_weights(ok) if ok else {}
    sites = []
    for m in ok:
        site = _site_of(m)
        met = m.content["metrics"]
        reported = int(met["num-examples"])
        if not spec.secagg:  # the weight FedAvg uses (frames when units are mixed)
            met["num-examples"] = weights[site["dataset-id"]]
        if not spec.secagg:  # under SecAgg+ no single site's update is ever seen
            _save_arrays(rdir / "updates" / f"{site['dataset-id']}.npz", m.content["arrays"])
        sites.append(
            site
            | {
                "num_examples": int(met["num-examples"]),  # the FedAvg weight
                "num_units": reported,  # in the site's own privacy unit
                "train_loss": float(met["train-loss"]),
                "epsilon_round": float(met["epsilon-round"]),
                "epsilon": float(met["epsilon-spent"]),
                "train_seconds": float(met["train-seconds"]),
            }
        )
    if not spec.secagg:
        new_arrays, _ = strategy.aggregate_train(rnd, ok)
    if new_arrays is None:
        raise RunError(f"train round {rnd}: replies could not be aggregated")
    new_arrays = _keep_buffers(new_arrays, arrays)
    t_train = time.perf_counter() - t0
    eval_mse, per_site_mse, ev_failed, eval_weights = float("nan"), {}, [], {}
    if not spec.fold_evaluate:
        eval_content = RecordDict(
            {"arrays": _wire(spec, new_arrays), "config": _round_config(spec, rnd, history)}
        )
        try:
            ev_ok, ev_failed = _exchange(grid, spec, "evaluate", eval_content, rnd)
            eval_mse, eval_weights = _eval_mse(ev_ok, "num-examples")
            per_site_mse = {
                _site_of(m)["dataset-id"]: float(m.content["metrics"]["eval-mse"]) for m in ev_ok
            }
        except RunError as e:
            eval_mse, per_site_mse, ev_failed = float("nan"), {}, [{"reason": str(e)}]
    record = {
        "round": rnd,
        "train_loss": _weighted(ok, "train-loss"),
        "eval_mse": eval_mse,
        "eval_mse_per_dataset": per_site_mse,
        # each dataset's weight in eval_mse (held-out units, or frames when units are mixed)
        "eval_weights": eval_weights,
        "epsilon": {s["dataset-id"]: s["epsilon"] for s in sites},
        "epsilon_round": {s["dataset-id"]: s["epsilon_round"] for s in sites},
        "sites": sites,
        "weights": "frames" if len({s["privacy_unit"] for s in sites}) > 1 else "units",
        "failed": failed,
        "eval_failed": ev_failed,
        "seconds": time.perf_counter() - t0,
        "train_seconds": t_train,
    }
    _save_arrays(rdir / "global.npz", new_arrays)
    _write_json(rdir / "round.json", record)  # written last: marks the round completed
    history["rounds"].append(record)
    _write_json(out / "history.json", history)
    return new_arrays
