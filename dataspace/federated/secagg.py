"""Secure aggregation (SecAgg+) of the sites' updates: the server learns only their weighted sum.

Flower 1.42 ships SecAgg+ for its legacy API only: ``SecAggPlusWorkflow``
needs a ``LegacyContext`` (a legacy ``Strategy`` and ``ClientManager``) and
``secaggplus_mod`` expects legacy ``fitres.*`` records. This module runs the
same protocol inside this project's Message-API apps:

* site side, :func:`secagg_mod` (in the connector's ClientApp): messages that
  carry ``secaggplus_configs`` are checked by this site's guard (below), then
  go through Flower's own ``secaggplus_mod`` (key agreement, Shamir shares,
  masking, unmasking). Its training stage calls the connector's train handler
  (through the egress guard, which checks the plain update before it is masked)
  and hands the mod the *update* (weights sent minus weights trained) with the
  site's example count, already rounded to tens; the mod scales the update by
  that count over ``max_weight``, quantises it and sends it masked. The reply
  keeps the DP loss, epsilon and site info, and no tensors.
* server side, :func:`train_round`: the four stages (setup, share keys,
  collect masked vectors, unmask), a port of ``SecAggPlusWorkflow`` (1.42) on
  this project's ``Grid`` exchange. The unmasked sum gives
  ``sum_i q_i * update_i / sum_i q_i`` with ``q_i`` the quantised weight
  ``round(n_i / max_weight * 2**22)``: weighted FedAvg of the updates, added
  to the global model.

Error against plain FedAvg: each site's scaled update is quantised to steps
of ``2 * clipping_range / quantization_range`` (stochastic rounding), so the
aggregate differs by at most ``sites * step / sum_i(n_i / max_weight)`` per
coordinate (:func:`error_bound`), plus the weights' rounding to 2**-22. Values
beyond ``clipping_range`` are clipped: updates, not weights, are sent, so the
default range of 8 is far above them. ``max_weight`` must be at least every
site's example count: the server takes 1.5 times the largest DP count of the
statistics round.

The site's guard (threat model: every field of a message is the server's)
--------------------------------------------------------------------------

Flower's mod trusts every parameter the server sends. A site's update ``x`` goes
out as ``y = x + PRG(b) + sum_j +-PRG(s_j)``: its private mask seed ``b`` and one
pairwise mask per neighbour ``j`` that it received shares from. Each of the
``k`` share holders (the site included) holds one Shamir share, threshold
``t``, of ``b`` and one of the site's mask key ``sk1``; at unmask the server
names which neighbours are *active* (it gets their ``b`` shares) and which are
*dead* (their ``sk1`` shares). With ``b`` and ``sk1`` (or every neighbour's
``sk1``) it removes all masks of ``y`` and sees ``x``. :func:`secagg_mod`
therefore checks each stage against what the site itself fixed and saw, before
Flower's mod runs, and refuses (a :class:`SecAggRefusedError`, logged as
``access.refused`` with ``refusal`` and ``stage``, nothing charged; the session
ends and its secrets are forgotten, so a refused message cannot be retried with
other lists):

* every message: type ``train``; the stages in order (setup, share keys,
  collect, unmask; a setup starts over), addressed to this node. So no message
  alone makes a round "secure" (:func:`in_secure_round`): the train handler
  runs as such only inside Flower's collect stage after a setup and share keys
  this site accepted;
* setup (:class:`SecAggParameterError`): exactly the known keys, exact types
  (a bool is not an int); ``sample_number >= max(2, [training]
  secagg_min_sites)``; ``share_number == sample_number`` (all-to-all: every
  site holds a share of every other, so the site can check at share keys that
  it got the keys of the whole sample, and the server never picks a small
  neighbourhood for it); ``t >= 2`` and ``2t > k`` (below); the clipping range
  this site pins (:data:`CLIPPING_RANGE` or ``[training]
  secagg_clipping_range``), Flower's quantisation and modulus ranges; ``1 <=
  max_weight <= 2**31`` and finite;
* share keys (:class:`SecAggKeysError`): exactly ``k`` canonical, distinct node
  ids, this node among them with its own keys, every public key distinct;
* collect (:class:`SecAggSourcesError`), checked before the train handler (so
  before anything is charged): the shares of *every* other neighbour, each
  once, each decrypting to (that neighbour -> this node). Flower accepts any
  ``t - 1`` of them and masks with those only; a server that withholds some can
  then unmask ``y`` with fewer dead-listed ``sk1``s (with k = 5, t = 3: give the
  victim two sources, list those two dead to the other three sites, the victim
  active to two of them; every site's lists are locally plausible and the
  victim's update comes out). Requiring every source closes it; the price is
  that a site dropping at share keys aborts the round (one dropping while
  training is still recovered);
* unmask (:class:`SecAggUnmaskError`): active and dead lists without
  duplicates, disjoint, only of nodes whose shares this site holds, this node
  active and not dead, at least ``t`` active.

Why ``2t > k``: an honest holder gives, for one victim, either a share of its
``b`` (victim listed active) or of its ``sk1`` (dead), never both; the victim
gives only its own ``b`` share (it refuses to be dead). Recovering both needs
``t`` of each from ``k`` holders, so ``2t <= k``. Recovering ``b`` and every
neighbour's ``sk1`` instead needs ``(k - 1) t`` dead listings while each site
may list at most ``k - t`` dead (it keeps ``t`` active), which ``2t > k`` also
rules out. With ``c`` sites colluding with the server (they give both shares)
the bound is ``2t > k + c``; Flower's default ``t = round(2k/3)`` (at least 2)
passes ``2t > k``.

What one site cannot check (:mod:`dataspace.federated.dp` bounds it anyway:
each site's update is DP-SGD with the site's own noise, whatever happens to
SecAgg+):

* a server telling different sites different stories about one victim (the
  "split" attack): each site sees only its own lists. Without colluders the
  bound above defeats every such split; with ``c`` colluders it takes ``2t > k
  + c``, which no site can verify;
* Sybil neighbours: the node ids and public keys are the server's to invent.
  A server that makes up ``k - 1`` neighbours holds every share. SecAgg against
  a malicious server needs keys authenticated by the sites themselves (signed
  with their identity, checked against a roster the site trusts), which
  Flower's protocol lacks;
* that the sample is what the contract's consumer promised, or that the
  server really aggregates (it may drop every other site and keep one).

Masks from the whole seed (:func:`mask_stream`): Flower's ``pseudo_rand_gen``
XOR-folds each 256-bit seed to 32 bits to seed numpy's Mersenne Twister, so one
pairwise mask has 2**32 possible values and a server that saw an honest round
could search it (two sites: both updates; three: a meet-in-the-middle). Both
sides here use a ChaCha20 keystream keyed by SHA-256 of the whole seed instead:
the sites' mod (installed into Flower's mod by :func:`secagg_mod`) and
:func:`train_round`. Flower's own ``SecAggPlusWorkflow`` is therefore not a peer.

A policy may require SecAgg+ (ODRL ``aggregation eq secure``, ``dataspace
connector policy --require-secagg``): the ledger then refuses, logged and
uncharged, a round the ClientApp charges outside :func:`in_secure_round`.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)

from dataspace.errors import DataspaceError, RefusedError
from dataspace.policy.ledger import check_live
from dataspace.site import log as events
from dataspace.site.folder import Site

#: Flower's defaults (SecAggPlusWorkflow)
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
CLIPPING_RANGE = 8.0
#: the largest max_weight a setup may state (a weight is a count of examples)
MAX_WEIGHT_LIMIT = 2**31

_FITRES = ("fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status")


class SecAggError(DataspaceError):
    """A secure aggregation round that cannot complete (too few sites at some stage)."""


class SecAggRefusedError(RefusedError):
    """A SecAgg+ message this site does not act on: logged, nothing charged, session ended."""


class SecAggStageError(SecAggRefusedError):
    """Not a train message, out of the protocol's order, or not addressed to this node."""


class SecAggParameterError(SecAggRefusedError):
    """Setup parameters that are not this site's (sample, shares, threshold, ranges, weight)."""


class SecAggKeysError(SecAggRefusedError):
    """Share-keys stage: public keys that are not exactly the sample's, this node's included."""


class SecAggSourcesError(SecAggRefusedError):
    """Collect stage: shares that are not exactly one valid share of every other neighbour."""


class SecAggUnmaskError(SecAggRefusedError):
    """Unmask stage: active and dead lists this site cannot answer without exposing a site."""


class SecAggContractError(SecAggRefusedError):
    """An unmask request after the contract that charged the round was revoked or expired."""


class SecAggSettingsError(DataspaceError):
    """The site's own ``site.toml [training] secagg_*`` settings are invalid."""


def error_bound(
    num_examples: list[float],
    max_weight: float,
    clipping_range: float = CLIPPING_RANGE,
    quantization_range: int = QUANTIZATION_RANGE,
) -> float:
    """Largest per-coordinate difference from plain weighted FedAvg of the same updates."""
    step = 2 * clipping_range / quantization_range
    ratios = sum(n / max_weight for n in num_examples)
    return len(num_examples) * step / ratios + 2.0**-20


# ---------------------------------------------------------------- site side (ClientApp mod)


def _as_update(request: Message, reply: Message) -> Message:
    """The train reply in the legacy ``fitres`` form ``secaggplus_mod`` reads: the update."""
    sent = request.content["arrays"]
    trained = reply.content["arrays"]
    update = ArrayRecord({k: Array(_np(trained[k]) - _np(sent[k])) for k in sent})
    content = RecordDict(
        {
            "fitres.parameters": update,
            "fitres.num_examples": MetricRecord(
                {"num_examples": int(reply.content["metrics"]["num-examples"])}
            ),
            "fitres.metrics": ConfigRecord({}),
            "fitres.status": ConfigRecord({"code": 0, "message": ""}),
        }
    )
    for name in ("metrics", "info"):
        content[name] = reply.content[name]
    return Message(content, reply_to=request)


def _np(array: Any) -> np.ndarray:
    return np.asarray(array.numpy(), dtype=np.float64)


#: True while the train handler runs inside SecAgg+'s masking stage (set by :func:`secagg_mod`
#: after this site's guard and Flower's mod checked the protocol's stages, never by anything
#: a message says)
_IN_SECURE_ROUND: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "in_secure_round", default=False
)


def in_secure_round() -> bool:
    """Is the current train message's update going to be masked by SecAgg+?"""
    return _IN_SECURE_ROUND.get()


@dataclass(frozen=True)
class SiteLimits:
    """What this site pins for SecAgg+ (``site.toml [training]``), whatever a server says."""

    #: fewest sites a round may have (``secagg_min_sites``): with fewer, the sum says more
    min_sites: int = 2
    #: the quantisation's clipping range (``secagg_clipping_range``)
    clipping_range: float = CLIPPING_RANGE

    @classmethod
    def of(cls, site: Site | None) -> SiteLimits:
        """The site's settings, or the defaults when the node has no site."""
        section = site.config.get("training", {}) if site is not None else {}
        min_sites = section.get("secagg_min_sites", cls.min_sites)
        clip = section.get("secagg_clipping_range", cls.clipping_range)
        if type(min_sites) is not int or min_sites < 2:
            raise SecAggSettingsError(
                f"site.toml [training] secagg_min_sites={min_sites!r}: a whole number >= 2"
            )
        if type(clip) not in (int, float) or not (math.isfinite(clip) and clip > 0):
            raise SecAggSettingsError(
                f"site.toml [training] secagg_clipping_range={clip!r}: a positive number"
            )
        return cls(min_sites=min_sites, clipping_range=float(clip))


@dataclass
class GuardSession:
    """What this site accepted of the current SecAgg+ session (kept in the node's state)."""

    #: the last stage this site completed ("": none, only a setup may come)
    stage: str = ""
    nid: int = 0
    share_number: int = 0
    threshold: int = 0
    #: share keys: the nodes whose public keys this site got (itself included)
    neighbours: list[int] = field(default_factory=list)
    #: collect: the neighbours whose shares this site holds (itself excluded)
    sources: list[int] = field(default_factory=list)
    #: the run's id, from the collect stage's train config (for the log)
    run_id: str = ""


#: the node state's record of :class:`GuardSession` (next to Flower's ``secaggplus_state``)
GUARD_KEY = "dataspace_secagg_guard"
#: the node state's record of the contract whose round the session masked
CONTRACT_KEY = "dataspace_secagg_contract"


def bind_contract(ctxt: Context, contract_id: str) -> None:
    """The ClientApp's train handler, inside a secure round: which contract charged it
    (the unmask stage re-checks that contract before any share leaves)."""
    ctxt.state.config_records[CONTRACT_KEY] = ConfigRecord({"contract_id": contract_id})

#: the stage each stage must follow (a setup may come at any time: it starts over)
_AFTER = {
    Stage.SHARE_KEYS: Stage.SETUP,
    Stage.COLLECT_MASKED_VECTORS: Stage.SHARE_KEYS,
    Stage.UNMASK: Stage.COLLECT_MASKED_VECTORS,
}


def _load_session(ctxt: Context) -> GuardSession:
    rec = ctxt.state.config_records.get(GUARD_KEY)
    return GuardSession(**dict(rec)) if rec is not None else GuardSession()


def _save_session(ctxt: Context, session: GuardSession) -> None:
    ctxt.state.config_records[GUARD_KEY] = ConfigRecord(asdict(session))


def _end_session(ctxt: Context) -> None:
    """Forget the session, Flower's state with it: its keys, mask seed and the shares held
    of other sites. After a refusal nothing of it can be asked again; only a setup is
    accepted next (Flower's own check and this guard's)."""
    for key in (GUARD_KEY, RECORD_KEY_STATE):
        if key in ctxt.state.config_records:
            del ctxt.state.config_records[key]


def _site_of(ctxt: Context) -> Site | None:
    root = ctxt.node_config.get("site")
    return Site.open(str(root)) if root else None


def _stage_of(msg: Message, ctxt: Context, session: GuardSession) -> str:
    """The message's stage, if it may come now; else :class:`SecAggStageError`."""
    # Flower's mod hands any other type straight to the train callable: refuse, so the
    # train handler never runs as "secure" outside the collect stage
    if msg.metadata.message_type != "train":
        raise SecAggStageError(
            f"SecAgg+ configs on a {msg.metadata.message_type[:40]!r} message: only 'train'"
        )
    stage = msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
    if type(stage) is not str or stage not in Stage.all():
        raise SecAggStageError(f"unknown SecAgg+ stage {str(stage)[:40]!r}")
    node = msg.metadata.dst_node_id
    if node != ctxt.node_id:
        raise SecAggStageError(f"a message for node {node}; this is node {ctxt.node_id}")
    if stage != Stage.SETUP and session.stage != _AFTER[stage]:
        raise SecAggStageError(
            f"SecAgg+ stage {stage!r} after {session.stage or 'no setup'!r}: "
            f"it must follow {_AFTER[stage]!r} of this site's session"
        )
    return stage


def _only_keys(cfg: ConfigRecord, allowed: set[str], err: type[SecAggRefusedError]) -> None:
    """Refuse keys this site does not know: a future reader of them was never vetted here."""
    extra = sorted(set(cfg) - allowed - {Key.STAGE})
    if extra:
        raise err(f"unexpected SecAgg+ config keys {extra[:5]}")


def _typed(cfg: ConfigRecord, key: str, types: tuple[type, ...]) -> Any:
    value = cfg.get(key)
    if type(value) not in types:  # exact: a bool is not an int
        names = " or ".join(t.__name__ for t in types)
        raise SecAggParameterError(f"setup {key!r} must be {names}, got {value!r}")
    return value


_SETUP_TYPES: dict[str, tuple[type, ...]] = {
    Key.SAMPLE_NUMBER: (int,),
    Key.SHARE_NUMBER: (int,),
    Key.THRESHOLD: (int,),
    Key.CLIPPING_RANGE: (float,),
    Key.TARGET_RANGE: (int,),
    Key.MOD_RANGE: (int,),
    Key.MAX_WEIGHT: (int, float),
}


def check_setup(cfg: ConfigRecord, limits: SiteLimits) -> tuple[int, int]:
    """Check a setup's parameters against this site's; returns (share number, threshold)."""
    _only_keys(cfg, set(_SETUP_TYPES), SecAggParameterError)
    p = {key: _typed(cfg, key, types) for key, types in _SETUP_TYPES.items()}
    n, k, t = p[Key.SAMPLE_NUMBER], p[Key.SHARE_NUMBER], p[Key.THRESHOLD]
    fewest = max(2, limits.min_sites)
    if n < fewest:
        raise SecAggParameterError(f"a SecAgg+ sample of {n} sites; this site needs {fewest}")
    if k != n:
        # all-to-all: the site can then check that it got every sampled site's key, and
        # no server-picked neighbourhood holds its shares (module docstring)
        raise SecAggParameterError(f"share number {k} != sample number {n}: all-to-all only")
    if not (2 <= t <= k and 2 * t > k):
        # t > k/2: no server can collect both the mask seed and the key of a site
        raise SecAggParameterError(f"threshold {t} for {k} shares: need 2 <= t <= k, 2t > k")
    pinned = {
        Key.CLIPPING_RANGE: limits.clipping_range,
        Key.TARGET_RANGE: QUANTIZATION_RANGE,
        Key.MOD_RANGE: MODULUS_RANGE,
    }
    for key, want in pinned.items():
        if p[key] != want:
            raise SecAggParameterError(f"setup {key} = {p[key]!r}; this site uses {want!r}")
    mw = float(p[Key.MAX_WEIGHT])
    if not (math.isfinite(mw) and 1.0 <= mw <= MAX_WEIGHT_LIMIT):
        raise SecAggParameterError(f"max weight {mw!r} outside [1, {MAX_WEIGHT_LIMIT}]")
    return k, t


def _node_id(text: str) -> int:
    """A node id as a share-keys key: canonical decimal (``"01"`` would alias ``"1"``)."""
    if not text.isdigit() or str(int(text)) != text or not 0 < int(text) < 2**64:
        raise SecAggKeysError(f"{text[:30]!r} is not a node id")
    return int(text)


def check_share_keys(
    cfg: ConfigRecord, session: GuardSession, own_keys: tuple[bytes, bytes]
) -> list[int]:
    """The public keys of exactly the sample, this node's own among them; returns the ids."""
    ids, keys = [], []
    for name, value in cfg.items():
        if name == Key.STAGE:
            continue
        ids.append(_node_id(name))
        if not (
            isinstance(value, list) and len(value) == 2 and all(type(v) is bytes for v in value)
        ):
            raise SecAggKeysError(f"node {name}: public keys must be two byte strings")
        keys += value
    if len(set(ids)) != len(ids) or len(ids) != session.share_number:
        raise SecAggKeysError(
            f"{len(ids)} nodes' keys ({len(set(ids))} distinct); the setup said "
            f"{session.share_number}, all-to-all"
        )
    own = cfg.get(str(session.nid))
    if own is None or tuple(own) != own_keys:
        raise SecAggKeysError(f"this node ({session.nid}) is missing or has other keys")
    if len(set(keys)) != len(keys):
        raise SecAggKeysError("two nodes have the same public key")
    return sorted(ids)


def _int_list(cfg: ConfigRecord, key: str, err: type[SecAggRefusedError]) -> list[int]:
    value = cfg.get(key)
    if not isinstance(value, list) or any(type(v) is not int for v in value):
        raise err(f"{key!r} must be a list of node ids")
    if len(set(value)) != len(value):
        raise err(f"{key!r} lists a node twice")
    return value


def check_collect(cfg: ConfigRecord, session: GuardSession, ss2: dict[int, bytes]) -> list[int]:
    """One valid share of every other neighbour (``ss2``: this node's pairwise keys from
    share keys, Flower's state); returns the sources. Checked before the train handler."""
    _only_keys(cfg, {Key.SOURCE_LIST, Key.CIPHERTEXT_LIST}, SecAggSourcesError)
    srcs = _int_list(cfg, Key.SOURCE_LIST, SecAggSourcesError)
    cts = cfg.get(Key.CIPHERTEXT_LIST)
    if not isinstance(cts, list) or any(type(c) is not bytes for c in cts) or len(cts) != len(srcs):
        raise SecAggSourcesError("ciphertexts must be one byte string per source")
    others = set(session.neighbours) - {session.nid}
    if set(srcs) != others:
        # this site masks with its sources only: withheld ones weaken its mask (docstring)
        raise SecAggSourcesError(
            f"shares from {sorted(srcs)[:10]}; this site needs exactly those of its other "
            f"neighbours {sorted(others)[:10]}"
        )
    for src, ct in zip(srcs, cts, strict=True):
        _check_share(ss2, src, session.nid, ct)
    return srcs


def _check_share(ss2: dict[int, bytes], src: int, nid: int, ciphertext: bytes) -> None:
    """The share decrypts under the pairwise key with ``src`` and names (src -> nid)."""
    from cryptography.fernet import InvalidToken
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt
    from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_separate

    try:
        actual, dst, _, _ = share_keys_plaintext_separate(decrypt(ss2[src], ciphertext))
    except (InvalidToken, KeyError, ValueError, TypeError):
        raise SecAggSourcesError(f"the share from node {src} does not decrypt") from None
    if (actual, dst) != (src, nid):
        raise SecAggSourcesError(f"the share listed from {src} is ({actual} -> {dst})")


def check_unmask(cfg: ConfigRecord, session: GuardSession) -> None:
    """Lists this site can answer: each share it gives is of a seed or a key, never both."""
    _only_keys(cfg, {Key.ACTIVE_NODE_ID_LIST, Key.DEAD_NODE_ID_LIST}, SecAggUnmaskError)
    active = _int_list(cfg, Key.ACTIVE_NODE_ID_LIST, SecAggUnmaskError)
    dead = _int_list(cfg, Key.DEAD_NODE_ID_LIST, SecAggUnmaskError)
    both = set(active) & set(dead)
    if both:  # active and dead: both secrets of that site would go out
        raise SecAggUnmaskError(f"nodes {sorted(both)[:10]} listed both active and dead")
    nid = session.nid
    if nid not in active or nid in dead:  # a live site never gives its own key's share
        raise SecAggUnmaskError(f"this node ({nid}) must be active, not dead")
    held = set(session.sources) | {nid}
    unknown = (set(active) | set(dead)) - held
    if unknown:  # not neighbours that delivered shares here: nothing to give, or a ruse
        raise SecAggUnmaskError(f"nodes {sorted(unknown)[:10]} did not share keys with this site")
    if len(active) < session.threshold:  # fewer active means more dead (docstring's count)
        raise SecAggUnmaskError(f"{len(active)} active nodes, the threshold is {session.threshold}")


def _flower_state(ctxt: Context) -> Any:
    """Flower's own SecAgg+ state of this node (read only)."""
    from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState

    rec = ctxt.state.config_records.get(RECORD_KEY_STATE)
    if rec is None:
        raise SecAggStageError("no SecAgg+ session state at this node")
    return SecAggPlusState(**dict(rec))


def _run_id_of(msg: Message) -> str:
    cfg = msg.content.config_records.get("config")
    value = cfg.get("run-id", "") if isinstance(cfg, ConfigRecord) else ""
    return value[:200] if isinstance(value, str) else ""


def _guard(msg: Message, ctxt: Context, session: GuardSession, site: Site | None) -> GuardSession:
    """Check ``msg`` against the session so far; returns the session once Flower's mod ran."""
    stage = _stage_of(msg, ctxt, session)
    cfg = msg.content.config_records[RECORD_KEY_CONFIGS]
    if stage == Stage.SETUP:
        k, t = check_setup(cfg, SiteLimits.of(site))
        ctxt.state.config_records.pop(CONTRACT_KEY, None)  # a new session, no round yet
        return GuardSession(stage=stage, nid=ctxt.node_id, share_number=k, threshold=t)
    if stage == Stage.SHARE_KEYS:
        flower = _flower_state(ctxt)
        ids = check_share_keys(cfg, session, (flower.pk1, flower.pk2))
        return replace(session, stage=stage, neighbours=ids)
    if stage == Stage.COLLECT_MASKED_VECTORS:
        srcs = check_collect(cfg, session, dict(_flower_state(ctxt).ss2_dict))
        return replace(session, stage=stage, sources=sorted(srcs), run_id=_run_id_of(msg))
    check_unmask(cfg, session)
    # the unmask shares are key material of this site's masked update: none leave once
    # the contract that charged the round was revoked or expired (logged by the ledger)
    bound = ctxt.state.config_records.get(CONTRACT_KEY)
    if site is not None and bound is not None:
        try:
            check_live(site, str(bound["contract_id"]))
        except RefusedError as e:
            raise SecAggContractError(str(e)) from e
    return replace(session, stage=stage)


def _log_refusal(
    site: Site | None, err: SecAggRefusedError, msg: Message, ctxt: Context, session: GuardSession
) -> None:
    """``access.refused`` in the site's log (no site: a bare node, nothing to log to)."""
    if site is None:
        return
    cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    stage = cfg.get(Key.STAGE) if isinstance(cfg, ConfigRecord) else None
    run_id = _run_id_of(msg) or session.run_id
    events.refused(
        site,
        str(err),
        refusal=type(err).__name__,
        stage=str(stage)[:40],
        node=int(ctxt.node_id),
        flower_run=int(ctxt.run_id),
        group=str(msg.metadata.group_id)[:40],
        message_type=str(msg.metadata.message_type)[:40],
        **({"run_id": run_id} if run_id else {}),
    )


def mask_stream(
    seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]
) -> list[np.ndarray]:
    """SecAgg+ masks from the whole seed (module docstring), in ``[0, num_range)``.

    Flower's ``pseudo_rand_gen`` signature and output (int64 arrays of the given
    shapes); ChaCha20 (RFC 8439) keyed by ``SHA-256("dataspace/secagg-mask/v1" || seed)``,
    8 bytes a value reduced modulo ``num_range`` (exactly uniform for a power of two,
    such as :data:`MODULUS_RANGE`).
    """
    key = hashlib.sha256(b"dataspace/secagg-mask/v1\0" + bytes(seed)).digest()
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    out = []
    for dims in dimensions_list:
        n = math.prod(dims)
        words = np.frombuffer(stream.update(bytes(8 * n)), dtype="<u8")
        values = (words % np.uint64(num_range)).astype(np.int64)
        out.append(values.reshape(dims) if dims else np.array(values[0], dtype=np.int64))
    return out


def _strong_masks() -> None:
    """Flower's site-side SecAgg+ mod masks with :func:`mask_stream` (this process runs
    only the connector's apps, so replacing the module's generator is contained)."""
    # the module (its package exports the mod function under the same name)
    flower_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    flower_mod.pseudo_rand_gen = mask_stream


def secagg_mod(msg: Message, ctxt: Context, call_next: Callable) -> Message:
    """Guard, then run Flower's ``secaggplus_mod`` on SecAgg+ messages; pass others on."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    from flwr.client.mod import secaggplus_mod

    _strong_masks()

    site = _site_of(ctxt)
    session = _load_session(ctxt)
    try:
        accepted = _guard(msg, ctxt, session, site)
    except SecAggRefusedError as err:
        _end_session(ctxt)
        _log_refusal(site, err, msg, ctxt, session)
        raise

    def train_update(m: Message, c: Context) -> Message:
        if accepted.stage != Stage.COLLECT_MASKED_VECTORS:  # Flower's mod calls it then only
            raise SecAggStageError(f"the train handler called in stage {accepted.stage!r}")
        token = _IN_SECURE_ROUND.set(True)
        try:
            reply = call_next(m, c)
        finally:
            _IN_SECURE_ROUND.reset(token)
        return reply if reply.has_error() else _as_update(m, reply)

    try:
        reply = secaggplus_mod(msg, ctxt, train_update)
    except Exception:
        _end_session(ctxt)  # whatever failed (a refused round too), the session is over
        raise
    if reply.has_error():
        _end_session(ctxt)
        return reply
    _save_session(ctxt, accepted)
    for name in _FITRES:  # emptied by the mod; the masked vector is in its configs
        if name in reply.content:
            del reply.content[name]
    return reply


# ---------------------------------------------------------------- server side (ServerApp)


@dataclass
class _State:
    sampled: set[int]
    active: set[int]
    threshold: int
    neighbours: dict[int, set[int]] = field(default_factory=dict)
    public_keys: dict[int, list[bytes]] = field(default_factory=dict)
    fwd_srcs: dict[int, list[int]] = field(default_factory=dict)
    fwd_ciphertexts: dict[int, list[bytes]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)


Exchange = Callable[[list[Message]], list[Message]]

#: stages every sampled site must pass: a site's guard (:func:`check_share_keys`,
#: :func:`check_collect`) refuses to go on without every other site's keys and shares;
#: a site that drops while training is still unmasked as dead
_EVERY_SITE = ("setup", "share_keys")


def _send(
    exchange: Exchange, state: _State, make: Callable[[int], RecordDict], rnd: int, stage: str
) -> list[Message]:
    msgs = [
        Message(make(n), dst_node_id=n, message_type="train", group_id=str(rnd))
        for n in sorted(state.active)
    ]
    replies = exchange(msgs)
    ok = [m for m in replies if not m.has_error()]
    answered = {m.metadata.src_node_id for m in replies}
    state.failures += [
        {"node": m.metadata.src_node_id, "reason": f"{stage}: {m.error.reason}"}
        for m in replies
        if m.has_error()
    ] + [{"node": n, "reason": f"{stage}: no reply"} for n in state.active - answered]
    state.active = {m.metadata.src_node_id for m in ok}
    if stage in _EVERY_SITE and state.active != state.sampled:
        raise SecAggError(
            f"SecAgg+ round {rnd}, stage {stage}: sites {sorted(state.sampled - state.active)} "
            f"dropped; the sites mask only with every sampled site's keys and shares "
            f"({state.failures})"
        )
    for n in state.sampled:
        if len(state.neighbours[n] & state.active) < state.threshold:
            raise SecAggError(
                f"SecAgg+ round {rnd}, stage {stage}: node {n} has fewer than "
                f"{state.threshold} live neighbours ({state.failures})"
            )
    return ok


def train_round(
    exchange: Exchange,
    nodes: list[int],
    content: RecordDict,
    rnd: int,
    max_weight: float,
    clipping_range: float = CLIPPING_RANGE,
    quantization_range: int = QUANTIZATION_RANGE,
    modulus_range: int = MODULUS_RANGE,
    seed: int | None = None,
) -> tuple[ArrayRecord, list[Message], list[dict]]:
    """One SecAgg+ training round; returns (new global arrays, train replies, failures).

    ``exchange`` sends messages and returns the replies (the ServerApp's
    ``send_and_receive``); ``content`` is the plain train message (``arrays``
    = global model, ``config``). The replies carry ``metrics`` and ``info``,
    never an update.
    """
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    n = len(nodes)
    if n < 2:
        raise SecAggError(f"SecAgg+ needs at least 2 sites, round {rnd} has {n}")
    # Flower's defaults for num_shares=1.0 (all), reconstruction_threshold=2/3 of them; the
    # sites require all-to-all and 2t > k (check_setup), which these meet
    num_shares = n
    threshold = max(2, round(2 * num_shares / 3))
    state = _State(sampled=set(nodes), active=set(nodes), threshold=threshold)
    order = list(nodes)
    random.Random(seed).shuffle(order)
    half = num_shares >> 1
    state.neighbours = {
        nid: {order[(i + o) % n] for o in range(-half, half + 1)} for i, nid in enumerate(order)
    }

    # stage 0: setup -> public keys
    setup = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: num_shares,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: float(clipping_range),
        Key.TARGET_RANGE: int(quantization_range),
        Key.MOD_RANGE: int(modulus_range),
        Key.MAX_WEIGHT: float(max_weight),
    }
    ok = _send(
        exchange, state, lambda _: RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(setup)}), rnd,
        "setup",
    )  # fmt: skip
    for m in ok:
        cfg = m.content.config_records[RECORD_KEY_CONFIGS]
        state.public_keys[m.metadata.src_node_id] = [cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]]

    # stage 1: share keys -> encrypted shares, forwarded to their destinations
    def share_keys(nid: int) -> RecordDict:
        cfg = ConfigRecord(
            {str(j): state.public_keys[j] for j in state.neighbours[nid] & state.active}
        )
        cfg[Key.STAGE] = Stage.SHARE_KEYS
        return RecordDict({RECORD_KEY_CONFIGS: cfg})

    ok = _send(exchange, state, share_keys, rnd, "share_keys")
    state.fwd_srcs = {nid: [] for nid in state.active}
    state.fwd_ciphertexts = {nid: [] for nid in state.active}
    for m in ok:
        cfg = m.content.config_records[RECORD_KEY_CONFIGS]
        for dst, ctxt in zip(cfg[Key.DESTINATION_LIST], cfg[Key.CIPHERTEXT_LIST], strict=True):
            if dst in state.fwd_srcs:
                state.fwd_srcs[dst].append(m.metadata.src_node_id)
                state.fwd_ciphertexts[dst].append(ctxt)

    # stage 2: train, collect masked vectors
    def collect(nid: int) -> RecordDict:
        rd = RecordDict({k: v for k, v in content.items()})
        rd[RECORD_KEY_CONFIGS] = ConfigRecord(
            {
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.CIPHERTEXT_LIST: state.fwd_ciphertexts[nid],
                Key.SOURCE_LIST: state.fwd_srcs[nid],
            }
        )
        return rd

    trained = _send(exchange, state, collect, rnd, "collect_masked_vectors")
    masked = None
    for m in trained:
        vec = [bytes_to_ndarray(b) for b in m.content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        masked = vec if masked is None else parameters_addition(masked, vec)
    masked = parameters_mod(masked, modulus_range)

    # stage 3: unmask -> shares of live sites' mask seeds and of dropped sites' keys (all
    # sampled sites shared keys: _EVERY_SITE; the sites refuse any other list, check_unmask)
    active, dead = set(state.active), state.sampled - state.active

    def unmask(nid: int) -> RecordDict:
        nb = state.neighbours[nid]
        return RecordDict(
            {
                RECORD_KEY_CONFIGS: ConfigRecord(
                    {
                        Key.STAGE: Stage.UNMASK,
                        Key.ACTIVE_NODE_ID_LIST: sorted(nb & active),
                        Key.DEAD_NODE_ID_LIST: sorted(nb & dead),
                    }
                )
            }
        )

    ok = _send(exchange, state, unmask, rnd, "unmask")
    shares: dict[int, list[bytes]] = {nid: [] for nid in state.sampled}
    for m in ok:
        cfg = m.content.config_records[RECORD_KEY_CONFIGS]
        for owner, share in zip(cfg[Key.NODE_ID_LIST], cfg[Key.SHARE_LIST], strict=True):
            shares[owner].append(share)
    shape = get_parameters_shape(masked)
    for nid, share_list in shares.items():
        if len(share_list) < threshold:
            raise SecAggError(f"SecAgg+ round {rnd}: too few shares to unmask node {nid}")
        secret = combine_shares(share_list)
        if nid in active:  # the live site's private mask
            masked = parameters_subtraction(masked, mask_stream(secret, modulus_range, shape))
            continue
        for j in state.neighbours[nid] - {nid}:  # a dropped site's pairwise masks
            key = generate_shared_key(
                bytes_to_private_key(secret), bytes_to_public_key(state.public_keys[j][0])
            )
            mask = mask_stream(key, modulus_range, shape)
            op = parameters_addition if nid > j else parameters_subtraction
            masked = op(masked, mask)
    total = parameters_mod(masked, modulus_range)
    q_total, summed = factor_extract(total)
    mean = dequantize(summed, clipping_range, quantization_range)
    offset = -(len(active) - 1) * clipping_range
    scale = quantization_range / float(q_total)
    glob = content["arrays"]
    new = ArrayRecord(
        {
            k: Array((_np(glob[k]) + (d + offset) * scale).astype(glob[k].numpy().dtype))
            for k, d in zip(glob, mean, strict=True)
        }
    )
    return new, trained, state.failures
