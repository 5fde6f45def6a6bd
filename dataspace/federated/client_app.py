"""The connector's ClientApp: the only code that touches a site's frames in a run.

It is the holder's own code, installed with the connector; the consumer's run
only sends it a configuration. Per message (Flower 1.42 Message API):

* ``query.stats`` (before round 1, charged as round 1): DP normalisation sums
  (:mod:`.normalize`); never in a run with public statistics (config ``stats =
  "public"``, :mod:`.public_stats`): the site then releases nothing for
  statistics, normalises with the consumer's checked constants, and its plan
  gives the whole epsilon to DP-SGD and evaluation;
* ``train``: DP-SGD on the train episodes (:mod:`.dp`), replying with the
  updated weights (ArrayRecord), the number of examples rounded to tens, the
  loss and the epsilon spent (MetricRecord);
* ``evaluate``: held-out MSE, clipped and noised (charged with its round), with
  its weight: ``num-examples`` in the site's unit, ``eval-frames`` in frames.

Every number that leaves is a DP release: weights (DP-SGD), statistics and
losses (Gaussian mechanism, :func:`.dp.noisy_mean_loss`); the example count is
catalog metadata rounded to tens (frames), or the count of train / held-out
episodes (metadata too) when the site's privacy unit is the episode
(``site.toml [training] privacy_unit = "episode"``, see :mod:`.dp`): then every
release above is bounded per episode, and the unit is named in the replies'
``info`` (``privacy-unit``) and in each ``round.finished`` event. Train
replies also carry ``num-frames``, the same weight in frames (catalog
metadata), which the server uses when a federation mixes the two units
(evaluation replies likewise ``eval-frames``); and
``info`` names the statistics used (``stats``: ``"dp"`` or ``"public"``).

Before reading anything it finds the contract among the run's contract ids
that belongs to this site, checks the template, computes the privacy plan from
the contract, the site's settings and metadata only, and charges the round via
:func:`.guard.authorize_round`. Which site: ``context.node_config["site"]``
(a SuperNode's ``--node-config 'site="/abs/path"'``, or the simulation's node
mapping).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from dataspace.assurance import egress
from dataspace.connectors.site import Site
from dataspace.errors import NotFoundError, RefusedError
from dataspace.federated import data as fdata
from dataspace.federated import dp, guard, normalize, packing, public_stats, secagg
from dataspace.federated.templates import Policy, Template, get_template
from dataspace.quality.flags import flagged_episodes

# the egress guard checks and records every reply before it leaves (dataspace.assurance);
# under SecAgg+ (:mod:`.secagg`) it checks the plain update, which is then masked
app = ClientApp(mods=[secagg.secagg_mod, egress.guard_mod])

# Small MLPs on CPU: one intra-op thread is fastest, and several sites (or
# SuperNodes) share the machine; more threads thrash (10x slower measured here).
torch.set_num_threads(int(os.environ.get("DATASPACE_TORCH_THREADS", "1")))

#: frames kept in a warm process between rounds (keyed by site, dataset, split)
_FRAMES: dict[tuple[str, str, tuple[int, ...]], fdata.Frames] = {}


@dataclass(frozen=True)
class Job:
    """What one message asks of this site, resolved against the site's own rules."""

    site: Site
    run_id: str
    round_no: int
    contract: Any
    template: Template
    ref: fdata.DatasetRef
    split: fdata.Split
    settings: dp.TrainingSettings
    plan: dp.PrivacyPlan
    seed: int
    #: the run's public normalisation statistics (checked), None when they are DP
    public: normalize.Stats | None = None

    @property
    def stats_source(self) -> str:
        return "dp" if self.public is None else "public"


def _site(context: Context) -> Site:
    root = context.node_config.get("site")
    if not root:
        raise NotFoundError("this SuperNode has no node config 'site' (its site folder)")
    return Site.open(Path(str(root)))


#: contract id -> site root where it was found (a contract never moves between sites)
_WHERE: dict[str, str] = {}
#: dataset metadata and split: immutable for a dataset id (derived from its fingerprint)
_META: dict[tuple, tuple[fdata.DatasetRef, fdata.Split]] = {}


def _find_contract(site: Site, ids: list[str]) -> Any:
    mine = [c for c in ids if _WHERE.get(c) == str(site.root)]
    for cid in mine + [c for c in ids if c not in _WHERE]:
        try:
            contract = guard.load_contract(site, cid)
        except NotFoundError:
            _WHERE[cid] = ""  # not this site's (a process serves one site)
            continue
        _WHERE[cid] = str(site.root)
        return contract
    raise RefusedError(f"none of contracts {', '.join(ids)} is held by site {site.root}")


def _plan(
    contract: Any, rounds: int, split: fdata.Split, s: dp.TrainingSettings, public: bool = False
) -> dp.PrivacyPlan:
    # public statistics: no stats release, the whole epsilon to DP-SGD and evaluation
    make = public_stats.plan_without_stats if public else dp.make_plan
    return make(
        float(contract.epsilon),
        float(contract.delta),
        rounds,
        split.train_frames,
        s,
        episodes=len(split.train),
    )


def _charged_round(message: Message, cfg: Any) -> int:
    """The round a message is charged as: the statistics query is part of round 1."""
    if message.metadata.message_type == "query.stats":
        return 1
    return int(cfg["server-round"])


def log_refusal(
    site: Site, contract: Any, run_id: str, round_no: int, err: RefusedError, **fields: Any
) -> None:
    """``access.refused`` in the site's log for a refusal decided here, not by the ledger.

    The ledger (:func:`dataspace.policy.ledger.charge_round`) logs its own
    refusals; the ClientApp's own ones (malformed public statistics, a switched
    stats source, a statistics query in a public-stats run, a template the
    contract does not allow) are logged with the same fields, before the
    refusal is raised. Nothing is charged for any of them.
    """
    from dataspace.policy import events

    events.refused(
        site,
        str(err),
        contract_id=contract.contract_id,
        run_id=run_id,
        round=round_no,
        dataset_id=contract.dataset_id,
        consumer=contract.consumer.key_b64,
        refusal=type(err).__name__,
        **fields,
    )


def _refuse(job: Job, err: RefusedError, **fields: Any) -> RefusedError:
    """Log ``err`` for ``job`` (:func:`log_refusal`) and return it, to be raised."""
    log_refusal(
        job.site,
        job.contract,
        job.run_id,
        job.round_no,
        err,
        privacy_unit=job.settings.privacy_unit,
        **fields,
    )
    return err


def resolve(message: Message, context: Context) -> Job:
    """Everything decided before the charge: contract, template, plan (no data read)."""
    cfg = message.content["config"]
    site = _site(context)
    contract = _find_contract(site, str(cfg["contracts"]).split(","))
    run_id, round_no = str(cfg["run-id"]), _charged_round(message, cfg)
    template = get_template(str(cfg["template"]))
    if contract.template is not None and contract.template != template.name:
        err = RefusedError(
            f"contract {contract.contract_id} is for model template {contract.template!r}, "
            f"not {template.name!r}"
        )
        log_refusal(site, contract, run_id, round_no, err)
        raise err
    settings = dp.TrainingSettings.from_config(site.config).lowered_by(
        epochs=int(cfg.get("local-epochs", 0)) or None,
        clip_norm=float(cfg.get("clip-norm", 0.0)) or None,
    )
    rounds = min(int(cfg["num-rounds"]), int(contract.rounds))
    exclude = flagged_episodes if settings.exclude_flagged else None
    key = (str(site.root), contract.dataset_id, settings.heldout_fraction, bool(exclude))
    if key not in _META or exclude:  # flags can change between rounds: re-read them
        ref = fdata.dataset_ref(site, contract.dataset_id)
        split = fdata.split_episodes(site, ref.dataset_id, settings.heldout_fraction, exclude)
        _META[key] = (ref, split)
    ref, split = _META[key]
    # checked before anything is charged: finite, this dataset's dims, positive scales
    try:
        public = public_stats.from_config(cfg, ref.state_dim, ref.action_dim)
    except public_stats.RefusedPublicStatsError as e:
        log_refusal(site, contract, run_id, round_no, e, privacy_unit=settings.privacy_unit)
        raise
    return Job(
        site=site,
        run_id=run_id,
        round_no=int(cfg["server-round"]),
        contract=contract,
        template=template,
        ref=ref,
        split=split,
        settings=settings,
        plan=_plan(contract, rounds, split, settings, public is not None),
        seed=int(cfg.get("seed", 0)),
        public=public,
    )


def _frames(job: Job, episodes: tuple[int, ...]) -> fdata.Frames:
    key = (str(job.site.root), job.ref.dataset_id, episodes)
    if key not in _FRAMES:
        _FRAMES[key] = fdata.load_frames(job.site, job.ref, episodes)
    return _FRAMES[key]


def _per_episode(job: Job) -> bool:
    return job.settings.privacy_unit == "episode"


def _units(job: Job, frames: int, episodes: tuple[int, ...]) -> int:
    """How many privacy units: frames, or episodes (both catalog metadata)."""
    return len(episodes) if _per_episode(job) else frames


def _episodes_of(job: Job, fr: fdata.Frames):
    """Each frame's episode when the unit is the episode (the releases group by it)."""
    return fr.episode if _per_episode(job) else None


def _generator(job: Job, purpose: str) -> torch.Generator:
    h = hashlib.sha256(f"{job.seed}/{job.ref.dataset_id}/{job.round_no}/{purpose}".encode())
    return torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "big") >> 1)


def _policy_from(arrays: ArrayRecord, job: Job) -> Policy:
    policy = job.template.build(job.ref.state_dim, job.ref.action_dim)
    if packing.is_packed(arrays):  # the deployment engine's wire form
        policy.load_state_dict(packing.unpack_state_dict(arrays, policy.state_dict()))
    else:
        policy.load_state_dict(arrays.to_torch_state_dict())
    if job.public is not None:  # exactly the run's checked constants, whatever the arrays hold
        normalize.apply_stats(policy, job.public)
    return policy


def _charged(context: Context, job: Job) -> bool:
    rec = context.state.get("charged")
    return isinstance(rec, ConfigRecord) and f"{job.run_id}/{job.round_no}" in rec


def _heldout_mse(job: Job, arrays: ArrayRecord) -> tuple[float, int]:
    """Held-out MSE of ``arrays``, clipped per frame and noised (the round's eval release)."""
    policy = _policy_from(arrays, job)
    fr = _frames(job, job.split.heldout)
    xs, ys = normalize.normalised(policy, fr.state, fr.action)
    x, y = job.template.pairs(xs, ys, fr.episode)
    n = max(1, _units(job, job.split.heldout_frames, job.split.heldout))
    mse = dp.noisy_mean_loss(
        policy,
        x,
        y,
        n,
        job.settings.eval_clip,
        job.plan.eval_noise,
        _generator(job, "eval"),
        episode=_episodes_of(job, fr),
    )
    return float(mse), n if _per_episode(job) else int(max(10, round(n, -1)))


def _mark_charged(context: Context, job: Job) -> None:
    rec = context.state.get("charged")
    if not isinstance(rec, ConfigRecord):
        rec = ConfigRecord()
    rec[f"{job.run_id}/{job.round_no}"] = True
    context.state["charged"] = rec


def _info(job: Job) -> ConfigRecord:
    return ConfigRecord(
        {
            "site": job.site.name,
            "dataset-id": job.ref.dataset_id,
            "contract-id": job.contract.contract_id,
            "fingerprint": job.ref.fingerprint,
            "privacy-unit": job.settings.privacy_unit,
            "stats": job.stats_source,
        }
    )


def _log_finished(
    job: Job, epsilon: float, update_sha256: str, loss: float, **extra: object
) -> None:
    """round.finished in the site's ledger and log (the policy area's recorder)."""
    from dataspace.policy.ledger import record_round_finished

    record_round_finished(
        job.site,
        job.contract.contract_id,
        job.run_id,
        job.round_no,
        epsilon_spent=epsilon,
        model_sha256=update_sha256,
        train_loss=loss,
        template=job.template.name,
        privacy_unit=job.settings.privacy_unit,
        **extra,
    )


def _frames_weight(job: Job, heldout: bool = False) -> int:
    """FedAvg weight in frames, from catalog metadata only, rounded to tens.

    Per frame: the train frames (as ``num-examples``). Per episode: the train
    episodes times the dataset's mean frames per episode (``datasets.frames /
    datasets.episodes``, both in the catalog), not the split's own frame count.
    ``heldout``: the same for the held-out episodes (``eval-frames``, the weight
    of the held-out MSE when a federation mixes units).
    """
    episodes = job.split.heldout if heldout else job.split.train
    if _per_episode(job):
        n = len(episodes) * job.ref.frames / max(1, job.ref.episodes)
    else:
        n = job.split.heldout_frames if heldout else job.split.train_frames
    return int(max(10, round(n, -1)))


def arrays_sha256(arrays: ArrayRecord) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode() + b"\0")
        h.update(np.ascontiguousarray(arrays[k].numpy()).tobytes())
    return h.hexdigest()


def _fix_stats_source(job: Job, source: str) -> None:
    """:func:`.public_stats.fix_stats_source`, its refusal logged (nothing charged)."""
    try:
        public_stats.fix_stats_source(job.site, job.ref.dataset_id, job.run_id, source)
    except public_stats.StatsSourceError as e:
        raise _refuse(job, e, stats=source) from None


@app.query("stats")
def stats(message: Message, context: Context) -> Message:
    """Before round 1: the site's DP sums for normalisation, charged as part of round 1."""
    job = resolve(message, context)
    charged = dataclasses.replace(job, round_no=1)  # the query is charged as round 1
    if job.public is not None:
        raise _refuse(
            charged,
            public_stats.StatsSourceError(
                f"run {job.run_id} uses public statistics: site {job.site.name} releases none"
            ),
            stats="public",
        )
    _fix_stats_source(charged, "dp")
    charge = job.plan.charge(1)
    guard.authorize_round(
        job.site, job.contract.contract_id, job.run_id, 1, charge, job.settings.privacy_unit
    )
    fr = _frames(job, job.split.train)  # read only after the charge
    gen = _generator(job, "stats")
    bound = job.settings.stats_bound
    ep = _episodes_of(job, fr)  # per episode: each episode one histogram count, one mean
    if bound is None:  # the site's own DP choice, paid for in the plan (stats_releases)
        bound = normalize.dp_bound(fr.state, fr.action, job.plan.stats_noise, gen, episode=ep)
    sums = normalize.dp_sums(fr.state, fr.action, bound, job.plan.stats_noise, gen, episode=ep)
    lists = sums.to_lists()
    content = RecordDict(
        {
            "sums": ConfigRecord(
                {
                    "sum": lists["sum"],
                    "sumsq": lists["sumsq"],
                    "count": lists["count"],
                    "bound": lists["bound"],
                    "noise": lists["noise"],
                    "state-dim": job.ref.state_dim,
                    "action-dim": job.ref.action_dim,
                }
            ),
            "metrics": MetricRecord(
                {"epsilon-round": charge, "epsilon-spent": job.plan.epsilon_after(0)}
            ),
            "info": _info(job),
        }
    )
    return Message(content, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """One round of DP-SGD from the global weights; replies with the update only."""
    t0 = time.perf_counter()
    job = resolve(message, context)
    # a run keeps the stats source it started with (the two plans' charges do not compose)
    _fix_stats_source(job, job.stats_source)
    charge = job.plan.charge(job.round_no)
    guard.authorize_round(
        job.site,
        job.contract.contract_id,
        job.run_id,
        job.round_no,
        charge,
        job.settings.privacy_unit,
    )
    _mark_charged(context, job)
    cfg = message.content["config"]
    # folded evaluation: the global model sent is the previous round's; its held-out MSE
    # is that round's eval release (charged with it), computed before training here
    folded: dict[str, float | int] = {}
    # (only the round just before, and only if it was trained and charged here: a resumed
    # run's first round, or a site that missed the last one, replies without it)
    ev = int(cfg.get("evaluate-round", 0) or 0)
    prev = dataclasses.replace(job, round_no=ev)
    if ev >= 1 and ev == job.round_no - 1 and _charged(context, prev):
        mse, n_eval = _heldout_mse(prev, message.content["arrays"])
        folded = {
            "eval-mse": mse,
            "eval-examples": n_eval,
            "eval-frames": _frames_weight(prev, heldout=True),
        }
    policy = _policy_from(message.content["arrays"], job)
    fr = _frames(job, job.split.train)
    xs, ys = normalize.normalised(policy, fr.state, fr.action)
    x, y = job.template.pairs(xs, ys, fr.episode)
    res = dp.train_dp(
        policy.net,
        x,
        y,
        job.plan,
        lr=float(cfg.get("lr", 0.5)),
        generator=_generator(job, "train"),
        mode=job.settings.grad_sample_mode,
        episode=fr.episode,
    )
    # the loss reported is a DP release too (the step losses would leak)
    loss = dp.noisy_mean_loss(
        policy,
        x,
        y,
        _units(job, job.split.train_frames, job.split.train),
        job.settings.eval_clip,
        job.plan.eval_noise,
        _generator(job, "train-loss"),
        episode=_episodes_of(job, fr),
    )
    # frame counts are catalog metadata, rounded so a round reveals no exact size; per
    # episode, the count of train episodes (metadata too), the unit FedAvg then weighs by
    examples = (
        len(job.split.train)
        if _per_episode(job)
        else int(max(10, round(job.split.train_frames, -1)))
    )
    arrays = ArrayRecord(policy.state_dict())
    eps_spent = job.plan.epsilon_after(job.round_no)
    _log_finished(job, charge, arrays_sha256(arrays), loss, **egress.round_details(arrays))
    metrics = MetricRecord(
        {
            "num-examples": int(examples),
            # the same weight in frames (catalog metadata): what FedAvg uses when a
            # federation mixes frame and episode sites (:mod:`.server_app`)
            "num-frames": _frames_weight(job),
            "train-loss": float(loss) if math.isfinite(loss) else 1e9,
            "epsilon-round": float(charge),
            "epsilon-spent": float(eps_spent),
            "noise-multiplier": float(job.plan.noise_multiplier),
            "steps": int(res.steps),
            "train-seconds": float(time.perf_counter() - t0),
            **folded,
        }
    )
    if packing.is_packed(message.content["arrays"]):  # answer in the form received
        arrays = packing.pack(arrays)
    return Message(
        RecordDict({"arrays": arrays, "metrics": metrics, "info": _info(job)}), reply_to=message
    )


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Held-out MSE of the global model, clipped per frame and noised (charged in train)."""
    job = resolve(message, context)
    if job.round_no < 1 or not _charged(context, job):
        raise RefusedError(
            f"evaluate for round {job.round_no} of run {job.run_id}: that round was not "
            "trained (and charged) here"
        )
    mse, n = _heldout_mse(job, message.content["arrays"])
    # eval-frames: the same weight in frames (catalog metadata), for mixed federations
    frames = _frames_weight(job, heldout=True)
    metrics = MetricRecord({"num-examples": n, "eval-mse": mse, "eval-frames": frames})
    return Message(RecordDict({"metrics": metrics, "info": _info(job)}), reply_to=message)
