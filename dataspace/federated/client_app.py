"""The connector's ClientApp: the only code that touches a site's frames in a run.

It is the holder's own code, installed with the connector; the consumer's run
only sends it messages, and every field of a message (config, arrays, type,
how often it comes) is the sender's to choose. So the site decides everything
that matters for privacy itself (docs/threat-model.md):

* **the mechanism** comes from the contract and ``site.toml [training]`` only
  (:func:`resolve`): rounds (the contract's), noise, sample rate, steps, clip
  and evaluation noise (:mod:`.dp`'s plan). A message that states another
  number of rounds, epochs or clip norm, an absurd learning rate, a template
  the contract does not allow, malformed public statistics, or arrays that are
  not exactly the template's finite weights is refused, logged
  (``access.refused``) and charged nothing;
* **the noise** of every release is drawn from the site's secret CSPRNG
  (:mod:`.noise`), fresh for each; nothing in a message seeds anything;
* **every release is charged before it is computed**, durably, by the ledger's
  privacy filter (:func:`.guard.authorize_round`): the statistics (round 0,
  once per contract: a later query gets the same noisy answer again, free),
  each round (its DP-SGD update, its train loss and its one evaluation);
  a (run, round) executes at most once and every message re-checks the
  contract (revoked or expired means nothing more leaves);
* **evaluation** is at most once per round trained here
  (:func:`dataspace.policy.ledger.claim_evaluation`), logged as ``round.evaluated``;
* **normalisation** is checked, never the server's buffers: the run's public
  statistics, or in a DP-stats run the pooled DP statistics the server sends after
  round 0 (:func:`.public_stats.pooled_from_config`; before this site released its
  own, refused; an older server sends none and the site uses its own release);
  the reply echoes the server's buffers unchanged, so nothing of the site's enters them.

Per message (Flower 1.42 Message API):

* ``query.stats``: DP normalisation sums (:mod:`.normalize`); never in a run
  with public statistics (config ``stats = "public"``, :mod:`.public_stats`);
* ``train``: DP-SGD on the train episodes (:mod:`.dp`), replying with the
  updated weights (ArrayRecord), the number of examples rounded to tens, the
  DP loss and the epsilon charged (MetricRecord); with ``evaluate-round`` (the
  previous round) it first spends that round's evaluation;
* ``evaluate``: held-out MSE, clipped and noised, with its weight:
  ``num-examples`` in the site's unit, ``eval-frames`` in frames.

The privacy unit is the site's (``site.toml [training] privacy_unit``, frame or
episode, :mod:`.dp`); it is named in the replies' ``info`` and in each
``round.started``. Example counts are catalog metadata rounded to tens (frames)
or counts of episodes. Which site: ``context.node_config["site"]`` (a
SuperNode's ``--node-config 'site="/abs/path"'``, or the simulation's node mapping).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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

from dataspace.errors import NotFoundError, RefusedError
from dataspace.federated import data as fdata
from dataspace.federated import dp, egress, guard, normalize, packing, public_stats, secagg
from dataspace.federated.noise import NoiseSource, noise_kind
from dataspace.federated.templates import REGISTRY as TEMPLATES
from dataspace.federated.templates import Policy, Template, get_template
from dataspace.policy import ledger
from dataspace.quality.flags import flagged_episodes
from dataspace.site import log as events
from dataspace.site.folder import Site

# the egress guard checks and records every reply before it leaves (dataspace.assurance);
# under SecAgg+ (:mod:`.secagg`) it checks the plain update, which is then masked
app = ClientApp(mods=[secagg.secagg_mod, egress.guard_mod])

# Small MLPs on CPU: one intra-op thread is fastest, and several sites (or
# SuperNodes) share the machine; more threads thrash (10x slower measured here).
torch.set_num_threads(int(os.environ.get("DATASPACE_TORCH_THREADS", "1")))

#: the largest learning rate a message may ask for (the rate is the server's choice: it
#: changes no privacy guarantee, but an absurd one is a message not meant for training)
MAX_LR = 100.0

#: frames kept in a warm process between rounds (keyed by site, dataset, split)
_FRAMES: dict[tuple[str, str, tuple[int, ...]], fdata.Frames] = {}


class MessageRefusedError(RefusedError):
    """A message this site does not act on: malformed, or not for a contract it holds."""


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
    lr: float
    #: the run's public normalisation statistics (checked), None when they are DP
    public: normalize.Stats | None = None
    #: a DP-stats run's pooled statistics from the server (checked), None before them
    pooled: normalize.Stats | None = None
    #: optimizer and learning-rate schedule (post-processing; :class:`.dp.Recipe`)
    recipe: dp.Recipe = dataclasses.field(default_factory=dp.Recipe)

    @property
    def stats_source(self) -> str:
        return "dp" if self.public is None else "public"


def _site(context: Context) -> Site:
    root = context.node_config.get("site")
    if not root:
        raise NotFoundError("this SuperNode has no node config 'site' (its site folder)")
    return Site.open(Path(str(root)))


#: dataset metadata and split: immutable for a dataset id (derived from its fingerprint)
_META: dict[tuple, tuple[fdata.DatasetRef, fdata.Split]] = {}

#: most contract ids one message may name (one a site; federations of this many sites)
MAX_CONTRACTS = 1024


def _find_contract(site: Site, ids: list[str]) -> Any:
    """The first of ``ids`` that this site holds (one lookup, whatever the sender lists)."""
    if len(ids) > MAX_CONTRACTS:
        raise MessageRefusedError(
            f"the message names {len(ids)} contracts; at most {MAX_CONTRACTS} are read"
        )
    held = guard.held_contracts(site, ids)
    for cid in ids:
        if cid in held:
            return guard.load_contract(site, cid)
    raise MessageRefusedError(
        f"none of the {len(ids)} contracts named ({_short(','.join(ids))}) is held by site "
        f"{site.name}"
    )


def _short(value: Any, n: int = 80) -> str:
    """A sender's value as quoted in a refusal: never more than ``n`` characters."""
    text = repr(value)
    return text if len(text) <= n else text[:n] + f"... ({len(text)} characters)"


def _plan(
    contract: Any, split: fdata.Split, s: dp.TrainingSettings, public: bool = False
) -> dp.PrivacyPlan:
    """The contract's mechanism at this site: the contract's rounds, the site's settings.

    Public statistics: no stats release, the whole epsilon to DP-SGD and evaluation.
    """
    make = public_stats.plan_without_stats if public else dp.make_plan
    return make(
        float(contract.terms.epsilon),
        float(contract.terms.delta),
        int(contract.terms.rounds),
        split.train_frames,
        s,
        episodes=len(split.train),
    )


def log_refusal(
    site: Site, contract: Any, run_id: str, round_no: int, err: RefusedError, **fields: Any
) -> None:
    """``access.refused`` in the site's log for a refusal decided here, not by the ledger.

    The ledger (:func:`dataspace.policy.ledger.charge_round`) logs its own
    refusals; the ClientApp's own ones (a malformed message, a mechanism that is
    not the site's, malformed public statistics, a switched stats source, a
    template the contract does not allow) are logged with the same fields,
    before the refusal is raised. Nothing is charged for any of them.
    """
    extra = {}
    if contract is not None:
        extra = {
            "contract_id": contract.terms.contract_id,
            "dataset_id": contract.terms.dataset_id,
            "consumer": contract.consumer.key_b64,
        }
    events.refused(
        site,
        str(err),
        run_id=run_id[:200],
        round=round_no,
        refusal=type(err).__name__,
        **extra,
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


def _config(message: Message) -> ConfigRecord:
    cfg = message.content.config_records.get("config")
    if not isinstance(cfg, ConfigRecord):
        raise MessageRefusedError(f"a {message.metadata.message_type!r} message without config")
    return cfg


#: the largest round number a message may name (far above any contract's rounds; keeps
#: every logged round a JSON integer that RFC 8785 admits)
MAX_ROUND = 1_000_000


def _round_of(message: Message, cfg: ConfigRecord) -> int:
    """The release a message asks for: round 0 is the statistics query."""
    if message.metadata.message_type == "query.stats":
        return 0
    r = cfg.get("server-round")
    if type(r) is not int or not 1 <= r <= MAX_ROUND:
        raise MessageRefusedError(
            f"server-round must be a whole number in 1..{MAX_ROUND}, got {_short(r)}"
        )
    return r


def resolve(message: Message, context: Context, kind: str) -> Job:
    """Everything decided before the charge: contract, template, mechanism (no data read).

    ``kind`` is the handler's message type: Flower also routes ``train.x`` to the
    train handler, which the egress guard would refuse only after the charge.
    Refusals are logged (``access.refused``) and charge nothing.
    """
    site = _site(context)
    cfg = message.content.config_records.get("config")
    run_id = cfg.get("run-id", "") if isinstance(cfg, ConfigRecord) else ""
    run_id = run_id if isinstance(run_id, str) else _short(run_id)
    contract = None
    round_no = 0
    try:
        if message.metadata.message_type != kind:
            raise MessageRefusedError(
                f"message type {_short(message.metadata.message_type)}: this handler answers "
                f"{kind!r} only"
            )
        cfg = _config(message)
        round_no = _round_of(message, cfg)
        if not run_id or len(run_id) > 200:
            raise MessageRefusedError(f"run-id must be 1 to 200 characters, got {_short(run_id)}")
        contracts = cfg.get("contracts", "")
        if not isinstance(contracts, str) or len(contracts) > 64 * MAX_CONTRACTS:
            raise MessageRefusedError(f"contracts must be ids separated by commas, got "
                                      f"{_short(contracts)}")  # fmt: skip
        contract = _find_contract(site, contracts.split(","))
        name = cfg.get("template", "")
        if not isinstance(name, str) or name not in TEMPLATES:
            raise MessageRefusedError(
                f"unknown model template {_short(name)} (known: {', '.join(sorted(TEMPLATES))})"
            )
        template = get_template(name)
        terms = contract.terms
        if terms.template is not None and terms.template != template.name:
            raise MessageRefusedError(
                f"contract {terms.contract_id} is for model template {terms.template!r}, "
                f"not {template.name!r}"
            )
        settings = dp.TrainingSettings.from_config(site.config)
        window = template.history + template.chunk - 1
        if settings.privacy_unit == "frame" and window > 1:
            # one frame is in `window` training pairs: it would move every release by up to
            # `window` clips while the noise and the accountant count one
            raise dp.MechanismError(
                f"template {template.name} builds each pair from {window} frames: with "
                "privacy_unit 'frame' one frame would move each release by up to "
                f"{window} clips; this site trains it only with privacy_unit 'episode'"
            )
        # the site fixes the mechanism: a message may repeat it, never change it
        settings.check_request(cfg.get("local-epochs"), cfg.get("clip-norm"))
        rounds = cfg.get("num-rounds")
        if rounds is not None and (type(rounds) is not int or not 1 <= rounds <= terms.rounds):
            raise dp.MechanismError(
                f"the message plans {_short(rounds)} rounds; contract {terms.contract_id} "
                f"allows 1..{terms.rounds}, and its noise is planned for {terms.rounds}"
            )
        # a message without the recipe's keys is an older server's: SGD, constant rate
        optimizer = cfg.get("optimizer", "sgd")
        schedule = cfg.get("lr-schedule", "constant")
        warmup = cfg.get("warmup", 0.0)
        dp.check_recipe(optimizer, schedule, warmup)
        lr = cfg.get("lr", dp.DEFAULT_LR[optimizer])
        if type(lr) not in (int, float) or not (math.isfinite(lr) and 0 < lr <= MAX_LR):
            raise MessageRefusedError(f"learning rate must be in (0, {MAX_LR:g}], got {_short(lr)}")
        exclude = flagged_episodes if settings.exclude_flagged else None
        key = (str(site.root), contract.terms.dataset_id, settings.heldout_fraction, bool(exclude))
        if key not in _META or exclude:  # flags can change between rounds: re-read them
            ref = fdata.dataset_ref(site, contract.terms.dataset_id)
            split = fdata.split_episodes(site, ref.dataset_id, settings.heldout_fraction, exclude)
            _META[key] = (ref, split)
        ref, split = _META[key]
        # checked before anything is charged: finite, this dataset's dims, positive scales
        public = public_stats.from_config(cfg, ref.state_dim, ref.action_dim)
        pooled = public_stats.pooled_from_config(cfg, ref.state_dim, ref.action_dim)
        try:
            plan = _plan(contract, split, settings, public is not None)
        except dp.PrivacyPlanError as e:  # e.g. a contract whose delta is 0: no plan meets it
            raise MessageRefusedError(f"contract {contract.terms.contract_id}: {e}") from e
    except (RefusedError, NotFoundError) as e:
        err = e if isinstance(e, RefusedError) else MessageRefusedError(str(e))
        log_refusal(site, contract, run_id, round_no, err)
        raise err from None
    # the schedule spans the run's rounds (as the message plans them, within the contract's)
    run_rounds = rounds if rounds is not None else int(terms.rounds)
    recipe = dp.Recipe(
        optimizer=optimizer,
        lr=float(lr),
        schedule=schedule,
        warmup=float(warmup),
        total_steps=run_rounds * plan.steps_per_round,
        offset=max(0, round_no - 1) * plan.steps_per_round,
    )
    return Job(
        site=site,
        run_id=run_id,
        round_no=round_no,
        contract=contract,
        template=template,
        ref=ref,
        split=split,
        settings=settings,
        plan=plan,
        lr=float(lr),
        public=public,
        pooled=pooled,
        recipe=recipe,
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


def _noise(job: Job, purpose: str, round_no: int | None = None) -> NoiseSource:
    """The secret noise of one release (:mod:`.noise`). The label, unique per release since
    a (dataset, run, round) executes once, only matters to seeded tests."""
    r = job.round_no if round_no is None else round_no
    return NoiseSource.fresh(f"{job.ref.dataset_id}/{job.run_id}/{r}/{purpose}")


def _site_stats(job: Job) -> normalize.Stats:
    """The normalisation this site trains and evaluates with: the run's checked public
    statistics; in a DP-stats run, once this site has released its own statistics, the
    run's checked pooled ones (:func:`.public_stats.pooled_from_config`), else its own
    exactly as its contract released them (an older server sends no pooled ones)."""
    if job.public is not None:
        return job.public
    released = ledger.released_stats(job.site, job.contract.terms.contract_id)
    if released is None:
        raise _refuse(
            job,
            MessageRefusedError(
                f"contract {job.contract.terms.contract_id} has released no normalisation "
                "statistics at this site: the run must ask for them (query.stats) first"
            ),
        )
    if job.pooled is not None:
        return job.pooled
    try:  # a release of the older format (one scalar bound) reads as that bound everywhere
        sums = normalize.NoisySums.from_lists(released, job.ref.state_dim + job.ref.action_dim)
    except normalize.StatsFormatError as e:
        raise _refuse(
            job,
            MessageRefusedError(
                f"contract {job.contract.terms.contract_id}: the statistics this site released "
                f"do not fit dataset {job.ref.dataset_id} ({e})"
            ),
        ) from None
    return normalize.combine([sums], job.ref.state_dim)


def _policy_from(arrays: Any, job: Job) -> Policy:
    """The template with the server's trainable weights and the site's own normalisation.

    ``arrays`` must be exactly the template's state (keys, shapes, float32; one
    packed vector on the deployment engine) with finite weights; else refused
    (logged, nothing charged). The server's buffers are never loaded.
    """
    policy = job.template.build(job.ref.state_dim, job.ref.action_dim)
    own = policy.state_dict()
    try:
        if not isinstance(arrays, ArrayRecord):
            raise ValueError("no arrays record")
        # what each Array says of itself (the egress guard compares the reply with it)
        # and what its bytes decode to must both be the template's float32 tensors
        packed = packing.is_packed(arrays)  # the deployment engine's wire form
        want = (
            {packing.PACKED: ((sum(v.numel() for v in own.values()),), "float32")}
            if packed
            else {k: (tuple(v.shape), "float32") for k, v in own.items()}
        )
        for k, a in arrays.items():
            if k not in want or (tuple(a.shape), str(a.dtype)) != want[k]:
                raise ValueError(f"{_short(k, 40)}: {_short((a.shape, a.dtype), 60)}")
            if tuple(a.numpy().shape) != want[k][0] or a.numpy().dtype != np.float32:
                raise ValueError(f"{k}: its bytes are not what its metadata says")
        if set(arrays.keys()) != set(want):
            raise ValueError(f"keys {_short(sorted(arrays.keys()))} are not the template's")
        state = packing.unpack_state_dict(arrays, own) if packed else arrays.to_torch_state_dict()
        params = {k for k, _ in policy.named_parameters()}
        if not all(bool(torch.isfinite(state[k]).all()) for k in params):
            raise ValueError("weights that are not finite")
    except (ValueError, KeyError, TypeError) as e:
        err = MessageRefusedError(f"arrays are not a {job.template.name} model: {e}")
        raise _refuse(job, err) from None
    policy.load_state_dict({k: state[k] if k in params else v for k, v in own.items()})
    normalize.apply_stats(policy, _site_stats(job))
    return policy


def _reply_arrays(policy: Policy, sent: ArrayRecord) -> ArrayRecord:
    """The trained weights, with the buffers exactly as the server sent them (nothing of
    the site's enters them), in the form received (packed or not)."""
    params = {k for k, _ in policy.named_parameters()}
    state = policy.state_dict()
    if packing.is_packed(sent):
        layout = {k: v for k, v in state.items()}
        theirs = packing.unpack_state_dict(sent, layout)
    else:
        theirs = sent.to_torch_state_dict()
    out = ArrayRecord({k: (state[k] if k in params else theirs[k]) for k in state})
    return packing.pack(out) if packing.is_packed(sent) else out


def _heldout_mse(job: Job, policy: Policy, round_no: int) -> tuple[float, int]:
    """Held-out MSE of ``policy``, clipped per frame and noised (a round's eval release)."""
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
        _noise(job, "eval", round_no),
        episode=_episodes_of(job, fr),
    )
    return float(mse), n if _per_episode(job) else int(max(10, round(n, -1)))


def _evaluate(job: Job, arrays: ArrayRecord, round_no: int) -> tuple[float, int]:
    """Spend round ``round_no``'s one evaluation on ``arrays`` (claimed first, logged)."""
    policy = _policy_from(arrays, job)
    ledger.claim_evaluation(
        job.site, job.contract.terms.contract_id, job.run_id, round_no, arrays_sha256(arrays)
    )
    return _heldout_mse(job, policy, round_no)


def _info(job: Job) -> ConfigRecord:
    return ConfigRecord(
        {
            "site": job.site.name,
            "dataset-id": job.ref.dataset_id,
            "contract-id": job.contract.terms.contract_id,
            "fingerprint": job.ref.fingerprint,
            "privacy-unit": job.settings.privacy_unit,
            "stats": job.stats_source,
            # which normalisation this reply was computed with (the server's record)
            "normalisation": (
                "public" if job.public is not None else "pooled" if job.pooled else "own"
            ),
        }
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


def _authorize(job: Job, release: str, releases: list, secure: bool = False) -> ledger.Charge:
    """Charge ``releases`` (the accountant's form) before anything is computed."""
    return guard.authorize_round(
        job.site,
        job.contract.terms.contract_id,
        job.run_id,
        job.round_no,
        releases,
        release=release,
        mechanism=job.plan.mechanism()
        | {"lr": job.lr, "optimizer": job.recipe.optimizer, "stats": job.stats_source},
        privacy_unit=job.settings.privacy_unit,
        secure_aggregation=secure,
        noise=noise_kind(),
    )


def _stats_reply(job: Job, lists: dict[str, Any], charged: float, spent: float) -> RecordDict:
    return RecordDict(
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
            "metrics": MetricRecord({"epsilon-round": charged, "epsilon-spent": spent}),
            "info": _info(job),
        }
    )


@app.query("stats")
def stats(message: Message, context: Context) -> Message:
    """The site's DP sums for normalisation: released once per contract (round 0)."""
    job = resolve(message, context, "query.stats")
    if job.public is not None:
        raise _refuse(
            job,
            public_stats.StatsSourceError(
                f"run {job.run_id} uses public statistics: site {job.site.name} releases none"
            ),
            stats="public",
        )
    _fix_stats_source(job, "dp")
    cid = job.contract.terms.contract_id
    released = ledger.released_stats(job.site, cid)
    if released is not None:  # the same noisy answer again: post-processing, free
        ledger.check_live(job.site, cid)
        spent = ledger.contract_epsilon(job.site, cid)
        return Message(_stats_reply(job, released, 0.0, spent), reply_to=message)
    charge = _authorize(job, "stats", job.plan.stats_release())
    fr = _frames(job, job.split.train)  # read only after the charge
    rng = _noise(job, "stats")
    bound = job.settings.stats_bound
    ep = _episodes_of(job, fr)  # per episode: each episode one histogram count, one mean
    if bound is None:  # the site's own DP choice, paid for in the plan (stats_releases)
        bound = normalize.dp_bound(fr.state, fr.action, job.plan.stats_noise, rng, episode=ep)
    sums = normalize.dp_sums(fr.state, fr.action, bound, job.plan.stats_noise, rng, episode=ep)
    lists = sums.to_lists()
    digest = hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()
    ledger.record_round_finished(
        job.site,
        cid,
        job.run_id,
        0,
        epsilon_spent=charge.epsilon,
        model_sha256=digest,
        payload=lists,
        release="stats",
        privacy_unit=job.settings.privacy_unit,
    )
    reply = _stats_reply(job, lists, charge.epsilon, charge.contract_epsilon)
    return Message(reply, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """One round of DP-SGD from the global weights; replies with the update only."""
    t0 = time.perf_counter()
    job = resolve(message, context, "train")
    cfg = message.content["config"]
    # a run keeps the stats source it started with (the two plans' charges do not compose)
    _fix_stats_source(job, job.stats_source)
    sent = message.content.array_records.get("arrays")
    policy = _policy_from(sent, job)  # checked before the charge: refusals cost nothing
    secure = secagg.in_secure_round()
    charge = _authorize(job, "round", job.plan.round_release(), secure)
    if secure:  # its unmask shares leave only while this contract may release
        secagg.bind_contract(context, job.contract.terms.contract_id)
    # folded evaluation: the global model sent is the previous round's; its held-out MSE
    # is that round's one evaluation, claimed (once) and computed before training here.
    # Only the round just before, and only if it was trained here: a resumed run's first
    # round, or a site that missed the last one, replies without it.
    folded: dict[str, float | int] = {}
    ev = cfg.get("evaluate-round", 0) or 0
    if type(ev) is int and ev >= 1 and ev == job.round_no - 1:
        try:
            mse, n_eval = _evaluate(job, sent, ev)
            prev = dataclasses.replace(job, round_no=ev)
            folded = {
                "eval-mse": mse,
                "eval-examples": n_eval,
                "eval-frames": _frames_weight(prev, heldout=True),
            }
        except RefusedError:
            folded = {}  # logged by the ledger; this round's training goes on
    fr = _frames(job, job.split.train)
    xs, ys = normalize.normalised(policy, fr.state, fr.action)
    x, y = job.template.pairs(xs, ys, fr.episode)
    rng = _noise(job, "train")
    res = dp.train_dp(
        policy.net,
        x,
        y,
        job.plan,
        lr=job.lr,
        rng=rng,
        mode=job.settings.grad_sample_mode,
        episode=fr.episode,
        recipe=job.recipe,
    )
    # the loss reported is a DP release too (the step losses would leak)
    loss = dp.noisy_mean_loss(
        policy,
        x,
        y,
        _units(job, job.split.train_frames, job.split.train),
        job.settings.eval_clip,
        job.plan.eval_noise,
        rng,
        episode=_episodes_of(job, fr),
    )
    # frame counts are catalog metadata, rounded so a round reveals no exact size; per
    # episode, the count of train episodes (metadata too), the unit FedAvg then weighs by
    examples = (
        len(job.split.train)
        if _per_episode(job)
        else int(max(10, round(job.split.train_frames, -1)))
    )
    arrays = _reply_arrays(policy, sent)
    ledger.record_round_finished(
        job.site,
        job.contract.terms.contract_id,
        job.run_id,
        job.round_no,
        epsilon_spent=charge.epsilon,
        model_sha256=arrays_sha256(arrays),
        release="round",
        train_loss=loss,
        template=job.template.name,
        privacy_unit=job.settings.privacy_unit,
        **egress.round_details(arrays),
    )
    metrics = MetricRecord(
        {
            "num-examples": int(examples),
            # the same weight in frames (catalog metadata): what FedAvg uses when a
            # federation mixes frame and episode sites (:mod:`.server_app`)
            "num-frames": _frames_weight(job),
            "train-loss": float(loss) if math.isfinite(loss) else 1e9,
            "epsilon-round": float(charge.epsilon),
            "epsilon-spent": float(charge.contract_epsilon),
            "noise-multiplier": float(job.plan.noise_multiplier),
            "steps": int(res.steps),
            "train-seconds": float(time.perf_counter() - t0),
            **folded,
        }
    )
    return Message(
        RecordDict({"arrays": arrays, "metrics": metrics, "info": _info(job)}), reply_to=message
    )


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Held-out MSE of the global model: the round's one evaluation, clipped and noised."""
    job = resolve(message, context, "evaluate")
    mse, n = _evaluate(job, message.content.array_records.get("arrays"), job.round_no)
    # eval-frames: the same weight in frames (catalog metadata), for mixed federations
    frames = _frames_weight(job, heldout=True)
    metrics = MetricRecord({"num-examples": n, "eval-mse": mse, "eval-frames": frames})
    return Message(RecordDict({"metrics": metrics, "info": _info(job)}), reply_to=message)
