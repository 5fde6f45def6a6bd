"""Driving witnesses: send a log's checkpoints to peer witnesses and keep their cosignatures.

The client side of C2SP tlog-witness v1.0.0 (https://c2sp.org/tlog-witness),
whose server side is :mod:`dataspace.audit.witness`. For each witness the
driver sends ``POST <witness>/add-checkpoint`` with ``old SIZE``, an RFC 9162
consistency proof from that size, and the log's latest signed checkpoint. The
witness knows which size it cosigned last; the client need not: a ``409``
answer carries it (``text/x.tlog.size``), and the request is rebuilt from there
(spec, "Client behavior"). The cosignature line that comes back is checked
against the witness's known key (C2SP tlog-cosignature: key type 0x04, the
signed message ``cosignature/v1\\ntime T\\n`` + the checkpoint body) and kept
next to the checkpoint it signs (:meth:`TransparencyLog.keep_cosignature`), so
it survives the log signing newer checkpoints meanwhile.

The hub pushes its log to every connector's witness and each connector pushes
its site log to the hub's (DESIGN.md, "Audit log": the logs witness each
other). Services run a :class:`WitnessPusher` thread that pushes whenever the
log grew (debounced; failures are logged and retried, never raised to the
request that appended); ``dataspace audit witness`` pushes once, for cron.

Only the standard library is used here (``urllib``), like the rest of the package.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dataspace.audit.checkpoint import parse_checkpoint
from dataspace.audit.cosignature import witness_verifier
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import (
    ALG_COSIGNATURE_V1,
    NoteError,
    Signature,
    Verifier,
    parse_note,
    parse_signature_line,
    parse_vkey,
)
from dataspace.audit.witness import SIZE_CONTENT_TYPE, Witness, request_body
from dataspace.audit.witnesskey import (
    MAX_ENDORSEMENT,
    WitnessKeyError,
    bound_origin,
    check_endorsement,
    log_origin,
)
from dataspace.audit.witnesspolicy import STALE_AFTER_S, WitnessPolicy, WitnessState
from dataspace.errors import DataspaceError

logger = logging.getLogger("dataspace.audit.witnessing")

#: where a dataspace service (hub or connector) serves its witness
WITNESS_PATH = "/v1/log/add-checkpoint"
#: 409 answers followed before giving up (each names a newer size the witness saw)
MAX_409 = 3


class WitnessingError(DataspaceError):
    """A witness that did not cosign a checkpoint; ``status`` is its HTTP status, if any."""

    def __init__(self, witness: str, message: str, status: int | None = None) -> None:
        super().__init__(f"witness {witness}: {message}")
        self.witness = witness
        self.detail = message
        self.status = status
        #: the add-checkpoint URL it was sent to (set by :func:`witness_all`)
        self.url: str | None = None


class WitnessRefusedError(WitnessingError):
    """The witness answered with a tlog-witness error status (400, 403, 404, 409, 422):
    for 409 and 422, the checkpoint is not consistent with what it cosigned before."""


class WitnessUnreachableError(WitnessingError):
    """No answer (connection refused, timeout, a non-witness reply)."""


class BadCosignatureError(WitnessingError):
    """The witness answered 200 with something that is not its valid cosignature."""


@dataclass(frozen=True)
class Peer:
    """A witness to push to: its add-checkpoint URL and, when known, its 0x04 key; or the
    key name and identity key of a dataspace service, whose witness key is then learned
    from the service, endorsed by that identity (:func:`resolve_peer`)."""

    url: str
    verifier: Verifier | None = None
    identity: tuple[str, bytes] | None = None

    @property
    def name(self) -> str:
        if self.verifier is not None:
            return self.verifier.name
        return self.identity[0] if self.identity is not None else self.url


@dataclass(frozen=True)
class Cosigned:
    """One cosignature got: which witness, of which checkpoint, the line as kept."""

    witness: str
    url: str
    origin: str
    size: int
    timestamp: int
    line: bytes
    verified: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "witness": self.witness,
            "url": self.url,
            "origin": self.origin,
            "size": self.size,
            "timestamp": self.timestamp,
            "cosignature": self.line.decode().rstrip("\n"),
            "verified": self.verified,
        }


def add_checkpoint_url(url: str) -> str:
    """A witness URL: a full ``.../add-checkpoint`` URL, a log URL (``.../v1/log``),
    or a dataspace service's root URL (its witness is at ``/v1/log/add-checkpoint``)."""
    u = url.rstrip("/")
    if u.endswith("/add-checkpoint"):
        return u
    if urllib.parse.urlsplit(u).path in ("", "/"):
        return u + WITNESS_PATH
    return u + "/add-checkpoint"


def read_witness_key(text: str) -> Verifier:
    """A witness's verifier key (vkey text with key type 0x04)."""
    try:
        v = parse_vkey(text.strip().splitlines()[0] if text.strip() else "")
    except NoteError as e:
        raise WitnessingError("key", f"not a witness vkey: {e}") from e
    if v.alg != ALG_COSIGNATURE_V1:
        raise WitnessingError(v.name, f"vkey has key type {v.alg:#04x}; a witness key is 0x04")
    return v


def peer_for_identity(url: str, name: str, public_key: bytes) -> Peer:
    """The witness of a dataspace service known by its key name and identity key: its
    witness key is the one that identity endorses (:mod:`.witnesskey`, :func:`resolve_peer`)."""
    return Peer(add_checkpoint_url(url), identity=(name, public_key))


def witness_peer(url: str, key: Verifier | tuple[str, bytes] | None) -> Peer:
    """A witness at ``url`` known by its 0x04 vkey, by (name, identity key), or not at all."""
    if isinstance(key, tuple):
        return peer_for_identity(url, *key)
    return Peer(add_checkpoint_url(url), key)


def witness_key_url(url: str) -> str:
    """Where a dataspace witness at add-checkpoint URL ``url`` serves its endorsed key."""
    return url.removesuffix("/add-checkpoint") + "/witness-key"


#: url -> (HTTP status, body)
GetFn = Callable[[str], tuple[int, bytes]]
#: seconds a witness key learned from its service is used before it is asked again
KEY_TTL_S = 300.0
_keys: dict[tuple[str, str, bytes], tuple[float, Verifier]] = {}
#: (name, identity key) -> the log verifier that identity endorsed last (its origin, its key)
_logs: dict[tuple[str, bytes], Verifier] = {}
_keys_lock = threading.Lock()


def http_get(timeout: float = 10.0) -> GetFn:
    """GET with the standard library; unreachable services raise."""

    def get(url: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read(MAX_ENDORSEMENT + 1)
        except urllib.error.HTTPError as e:
            return e.code, e.read(MAX_ENDORSEMENT + 1)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise WitnessUnreachableError(url, f"cannot reach it: {e}") from e

    return get


def resolve_peer(peer: Peer, get: GetFn | None = None, refresh: bool = False) -> Peer:
    """``peer`` with its witness key: as given, or, for a service known by its identity,
    the key that identity endorses at ``.../witness-key`` (kept :data:`KEY_TTL_S` s).

    A service that answers 404 there predates witness keys and cosigns with its identity
    key (type 0x04); only that identity's holder can make such cosignatures, so falling
    back gives a hostile network nothing. An endorsement that does not verify raises
    :class:`BadCosignatureError`.
    """
    if peer.verifier is not None or peer.identity is None:
        return peer
    name, ident = peer.identity
    k = (peer.url, name, ident)
    now = time.monotonic()
    with _keys_lock:
        kept = _keys.get(k)
    if kept is not None and not refresh and now - kept[0] < KEY_TTL_S:
        return replace(peer, verifier=kept[1])
    try:
        status, body = (get or http_get())(witness_key_url(peer.url))
    except WitnessUnreachableError as e:
        raise WitnessUnreachableError(name, f"{peer.url}: {e.detail}", e.status) from e
    if status == 200:
        try:
            endorsed = check_endorsement(body, name, ident)
        except WitnessKeyError as e:
            raise BadCosignatureError(name, f"its witness key: {e}") from e
        v = endorsed.witness
        if endorsed.log is not None:
            with _keys_lock:
                _logs[(name, ident)] = endorsed.log
    elif status == 404:
        v = witness_verifier(name, ident)
    else:
        raise WitnessUnreachableError(name, f"witness key: HTTP {status}", status)
    with _keys_lock:
        _keys[k] = (now, v)
    return replace(peer, verifier=v)


def known_witness_keys(peer: Peer) -> list[Verifier]:
    """The keys ``peer``'s cosignatures may verify with, without asking it (for request
    paths, e.g. the hub's dashboard, while the pusher's thread learns them): the key given,
    or, for a service known by its identity, the witness key learned from it, if any, and
    the identity's own 0x04 key, which cosigned before witness keys (one witness, by name)."""
    if peer.verifier is not None or peer.identity is None:
        return [] if peer.verifier is None else [peer.verifier]
    with _keys_lock:
        kept = _keys.get((peer.url, *peer.identity))
    legacy = witness_verifier(*peer.identity)
    return [legacy] if kept is None or kept[1] == legacy else [kept[1], legacy]


def endorsed_log(name: str, identity: bytes) -> Verifier | None:
    """The log verifier (origin and key) that the service (``name``, ``identity``) endorsed
    in the witness key it served last (:func:`resolve_peer`), if any was learned."""
    with _keys_lock:
        return _logs.get((name, identity))


def service_logs(
    witness: Witness, name: str, identity: bytes, kind: str, endorsed: Verifier | None = None
) -> list[Verifier]:
    """The logs ``witness`` trusts for the service known by ``name`` and ``identity`` key:
    one origin per log key (:mod:`.witnesskey`, "Log origins").

    Candidates: the log made before URL origins (origin ``name``, key ``identity``) and the
    new one (:func:`~.witnesskey.log_origin` of ``identity``). The one this witness has
    cosigned before is the log's, the other is never trusted: a log witnessed under one
    origin cannot start a fresh history under the other. Else the one the service
    endorses (``endorsed``, default :func:`endorsed_log`), else both, until one is
    cosigned. An endorsed log with another key (the site's identity key rotated after
    its log was made) is trusted as well, under the origin bound to that key only.
    """
    legacy = Verifier(name, identity)
    new = Verifier(log_origin(kind, identity), identity)
    endorsed = endorsed_log(name, identity) if endorsed is None else endorsed
    extra = []
    if (
        endorsed is not None
        and endorsed.public_key != identity
        and bound_origin(endorsed.name, endorsed.public_key, (kind,))
    ):
        extra = [Verifier(endorsed.name, endorsed.public_key)]
    for v in (new, legacy):
        if _has_state(witness, v.name, identity):
            return [v, *extra]
    for v in (new, legacy):
        if endorsed is not None and (endorsed.name, endorsed.public_key) == (v.name, identity):
            return [v, *extra]
    return [legacy, new, *extra]


def _has_state(witness: Witness, origin: str, key: bytes) -> bool:
    """Whether ``witness`` has cosigned a checkpoint of ``origin`` signed by ``key``."""
    if witness.state_path(origin, key).exists():
        return True
    try:
        return witness.latest(origin, key) is not None  # a state kept by name only
    except NoteError:
        return False


def forget_peer_key(peer: Peer) -> None:
    """Drop the witness key learned for ``peer`` (it cosigned with another: ask again)."""
    if peer.identity is not None:
        with _keys_lock:
            _keys.pop((peer.url, *peer.identity), None)


def build_request(log: TransparencyLog, note: bytes, old_size: int) -> bytes:
    """tlog-witness add-checkpoint body: ``old`` size, consistency proof, checkpoint."""
    size = parse_checkpoint(parse_note(note).text).size
    proof = log.consistency_proof(old_size, size) if 0 < old_size < size else []
    return request_body(old_size, proof, note)


def parse_size(body: bytes, witness: str) -> int:
    """A 409 answer's body: the witness's latest size for the origin (``text/x.tlog.size``)."""
    text = body.strip()
    if not text.isdigit():
        raise WitnessUnreachableError(witness, f"409 without a size ({body[:80]!r})", 409)
    return int(text)


def check_cosignature(line: bytes, body: bytes, peer: Peer) -> tuple[Signature, bool]:
    """Parse the witness's answer; with a known key, its cosignature must verify.

    Returns the signature and whether it was verified (no key known: not verified).
    """
    try:
        sig = parse_signature_line(line.strip(b"\n").split(b"\n")[0])
    except NoteError as e:
        raise BadCosignatureError(peer.name, f"answer is not a signature line: {e}") from e
    if len(sig.sig) != 72:
        raise BadCosignatureError(peer.name, "not a cosignature/v1 (timestamp + Ed25519)")
    v = peer.verifier
    if v is None:
        return sig, False
    if (sig.name, sig.key_id) != (v.name, v.key_id):
        raise BadCosignatureError(
            peer.name, f"cosignature is by {sig.name}+{sig.key_id.hex()}, not {v.vkey()}"
        )
    if not v.verify(body, sig.sig):
        raise BadCosignatureError(peer.name, "cosignature does not verify against its key")
    return sig, True


#: (url, body) -> (HTTP status, response body, content type)
PostFn = Callable[[str, bytes], tuple[int, bytes, str]]


def http_post(timeout: float = 10.0) -> PostFn:
    """The real transport (stdlib urllib); unreachable witnesses raise."""

    def post(url: str, body: bytes) -> tuple[int, bytes, str]:
        try:
            req = urllib.request.Request(
                url, data=body, method="POST", headers={"Content-Type": "text/plain"}
            )
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")
        except (urllib.error.URLError, OSError) as e:
            raise WitnessUnreachableError(url, f"cannot reach it: {e}") from e
        except ValueError as e:  # "unknown url type": a URL no witness can be at
            raise WitnessUnreachableError(url, f"not a usable URL: {e}") from e

    return post


def witness_once(
    log: TransparencyLog,
    peer: Peer,
    *,
    known_size: int | None = None,
    post: PostFn | None = None,
    note: bytes | None = None,
    get: GetFn | None = None,
) -> Cosigned:
    """Have ``peer`` cosign ``log``'s latest checkpoint (or ``note``, one this log
    signed); keep and return its cosignature.

    ``known_size`` is the size this witness cosigned last, if remembered (0 for a
    first contact); a wrong guess costs one 409 round trip. A peer known by its
    identity gets its witness key first (:func:`resolve_peer`, ``get``).
    """
    post = post or http_post()
    peer = resolve_peer(peer, get)
    note = log.checkpoint() if note is None else note
    old = known_size or 0
    seen: set[int] = set()
    for _ in range(MAX_409 + 1):
        body = parse_note(note).text
        cp = parse_checkpoint(body)
        try:
            status, resp, ctype = post(peer.url, build_request(log, note, min(old, cp.size)))
        except WitnessUnreachableError as e:
            if e.witness == peer.name:
                raise
            # the transport knows only the URL: name the witness (its key name) as well
            raise WitnessUnreachableError(peer.name, f"{peer.url}: {e.detail}", e.status) from e
        if status == 200:
            try:
                sig, verified = check_cosignature(resp, body, peer)
            except BadCosignatureError:
                forget_peer_key(peer)  # its key may have changed: learn it again next time
                raise
            log.keep_cosignature(body, sig.line(), signed=note)
            ts = int.from_bytes(sig.sig[:8], "big")
            return Cosigned(sig.name, peer.url, cp.origin, cp.size, ts, sig.line(), verified)
        text = resp[:300].decode("utf-8", "replace").strip()
        if status == 409 and (SIZE_CONTENT_TYPE in ctype or resp.strip().isdigit()):
            have = parse_size(resp, peer.name)
            if have in seen:
                break
            seen.add(have)
            if have > cp.size:  # it saw a newer checkpoint (another pusher): catch up
                note = log.checkpoint()
                if have > parse_checkpoint(parse_note(note).text).size:
                    raise WitnessRefusedError(
                        peer.name,
                        f"it cosigned {cp.origin} at size {have}, larger than this log's "
                        f"{cp.size}: a rollback or another history",
                        409,
                    )
            old = have
            continue
        if status in (400, 403, 404, 409, 422):
            raise WitnessRefusedError(
                peer.name, f"refused {cp.origin} size {cp.size} (HTTP {status}): {text}", status
            )
        raise WitnessUnreachableError(peer.name, f"HTTP {status}: {text}", status)
    raise WitnessRefusedError(peer.name, f"kept answering 409 for {log.origin}", 409)


def witness_all(
    log: TransparencyLog,
    peers: Iterable[Peer],
    known: dict[str, int] | None = None,
    post: PostFn | None = None,
    get: GetFn | None = None,
) -> tuple[list[Cosigned], list[WitnessingError]]:
    """Push to every peer; one failing witness never stops the others.

    ``known`` (URL -> size last cosigned) is read and updated in place.
    """
    known = {} if known is None else known
    got: list[Cosigned] = []
    errors: list[WitnessingError] = []
    # one checkpoint for all: witnesses that answer together cosign the same one, so a
    # busy log still gets fully cosigned checkpoints
    try:
        note: bytes | None = log.checkpoint()
    except DataspaceError:
        note = None
    for peer in peers:
        try:
            c = witness_once(
                log, peer, known_size=known.get(peer.url), post=post, note=note, get=get
            )
        except DataspaceError as e:  # a refusal, no answer, or our own log failed us
            err = e if isinstance(e, WitnessingError) else WitnessingError(peer.name, str(e))
            err.url = peer.url
            errors.append(err)
            continue
        known[peer.url] = c.size
        got.append(c)
    return got, errors


#: environment of the services: seconds before a failing witness is stale, and a fixed quorum
STALE_ENV = "DATASPACE_WITNESS_STALE_S"
QUORUM_ENV = "DATASPACE_WITNESS_QUORUM"


def policy_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``quorum`` and ``stale_after`` of a service's pusher, from its environment.

    ``DATASPACE_WITNESS_STALE_S`` (default :data:`STALE_AFTER_S`) and
    ``DATASPACE_WITNESS_QUORUM`` (default: every live witness). A value that is
    not a number, a negative stale time, or a quorum below 1 (which would call a
    checkpoint nobody cosigned witnessed) is ignored, with a warning.
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    settings = ((STALE_ENV, "stale_after", float, 0), (QUORUM_ENV, "quorum", int, 1))
    for name, key, conv, least in settings:
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue
        try:
            value = conv(raw)
            if value < least:
                raise ValueError(f"below {least}")
        except ValueError:
            logger.warning("%s=%r is not a number of at least %d; ignored", name, raw, least)
            continue
        out[key] = value
    return out


@dataclass
class PeerState:
    """What a pusher knows about one witness (:meth:`WitnessPusher.snapshot`)."""

    witness: str
    url: str
    size: int | None = None
    error: str | None = None
    last_try: float | None = None
    failures: int = 0
    #: first size of its current run of cosignatures (witnesspolicy.WitnessState.since)
    since: int | None = None
    #: UNIX time of its first failure since it last cosigned
    failing_since: float | None = None
    #: HTTP status of its last refusal
    status: int | None = None

    def policy_state(self) -> WitnessState:
        return WitnessState(
            self.witness,
            self.url,
            self.size,
            self.since,
            self.failing_since,
            self.error,
            self.status,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "witness": self.witness,
            "url": self.url,
            "size": self.size,
            "since": self.since,
            "error": self.error,
            "status": self.status,
            "failing_since": self.failing_since,
            "failures": self.failures,
        }


@dataclass
class WitnessPusher:
    """A daemon thread that keeps ``log``'s latest checkpoint cosigned by ``peers()``.

    It wakes on :meth:`notify` (after an append; debounced by ``debounce`` s) or
    every ``interval`` s (appends by other processes, e.g. the ledger writing a
    site log), and pushes to each witness whose cosigned size is behind the
    log. A failing witness is retried with a growing back-off (up to ``max_backoff``
    s), its error logged once per change; nothing is ever raised to the appender.

    After each pass it writes the log's witness policy (``LOG/witnesses.json``,
    :mod:`.witnesspolicy`): the current ``peers()``, what each cosigned and since
    when it fails, the ``quorum`` (None: every live witness) and ``stale_after``.
    The log's witnessed checkpoint follows it: a witness failing for
    ``stale_after`` s no longer holds it back, a removed one stops counting.
    """

    log: TransparencyLog
    peers: Callable[[], list[Peer]]
    interval: float = 2.0
    debounce: float = 0.2
    max_backoff: float = 30.0
    post: PostFn | None = None
    #: how witness keys are fetched from peers known by identity (:func:`resolve_peer`)
    get: GetFn | None = None
    quorum: int | None = None
    stale_after: float = STALE_AFTER_S
    #: wall clock (UNIX seconds) of the policy's failing_since; tests pass their own
    clock: Callable[[], float] = time.time
    state: dict[str, PeerState] = field(default_factory=dict)
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _written: WitnessPolicy | None = None
    _restored: bool = False
    _warned_stale: set[str] = field(default_factory=set)

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="witness-pusher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self.interval):
                self._stop.wait(self.debounce)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.push()
            except Exception:  # a bug here must never kill the service's witnessing for good
                logger.exception("witnessing %s failed", self.log.origin)

    def _restore(self) -> None:
        """Carry what the last run of this service knew (sizes, failures) over a restart."""
        self._restored = True
        policy = self.log.witness_policy()
        if policy is None:
            return
        self._written = policy
        for w in policy.witnesses:
            if w.url is not None and w.url not in self.state:
                self.state[w.url] = PeerState(
                    w.name,
                    w.url,
                    size=w.size,
                    error=w.error,
                    since=w.since,
                    failing_since=w.failing_since,
                    status=w.status,
                )

    def push(self, force: bool = False) -> list[Cosigned]:
        """One pass: push to every witness behind the log (all of them with ``force``)."""
        return self._pass(force)[0]

    def push_all(self) -> tuple[list[Cosigned], list[WitnessingError]]:
        """One pass to every witness (``dataspace audit witness --policy``): the
        cosignatures got and the witnesses that failed, the policy written."""
        return self._pass(True)

    def _pass(self, force: bool) -> tuple[list[Cosigned], list[WitnessingError]]:
        with self._lock:
            if not self._restored:
                self._restore()
            peers = self.peers()
            size = self.log.size
            now = time.monotonic()
            due = []
            for p in peers:
                st = self.state.setdefault(p.url, PeerState(p.name, p.url))
                st.witness = p.name
                if not force and st.size == size and st.error is None:
                    continue
                if not force and st.error is not None and st.last_try is not None:
                    wait = min(self.max_backoff, self.interval * 2 ** min(st.failures, 8))
                    if now - st.last_try < wait:
                        continue
                due.append(p)
            got: list[Cosigned] = []
            errors: list[WitnessingError] = []
            if due:
                known = {p.url: self.state[p.url].size or 0 for p in due}
                got, errors = witness_all(self.log, due, known, self.post, self.get)
                self._record(got, errors, now)
            self._write_policy(peers)
            return got, errors

    def _record(self, got: list[Cosigned], errors: list[WitnessingError], now: float) -> None:
        wall = self.clock()
        for c in got:
            st = self.state[c.url]
            if st.error is not None:
                logger.info("witness %s cosigns %s again", c.witness, c.origin)
            if st.since is None or (
                st.failing_since is not None and wall - st.failing_since >= self.stale_after
            ):
                st.since = c.size  # a new run: it is required from this size on
            st.size, st.error, st.failures, st.last_try = c.size, None, 0, now
            st.failing_since, st.status = None, None
        for e in errors:
            st = self.state[e.url or ""]
            if st.error != str(e):
                logger.warning("witnessing %s: %s", self.log.origin, e)
            st.error, st.last_try, st.status = str(e), now, e.status
            st.failures += 1
            if st.failing_since is None:
                st.failing_since = wall

    def _write_policy(self, peers: list[Peer]) -> None:
        """Store the current witness set; say once when a witness turns stale.

        None known yet (a service starting, before its catalog or hub answered): the
        last stored set stays. None left after this pusher stored some (every
        witness removed): the empty set is stored, so removed witnesses stop counting
        and the log serves its latest checkpoint, as a log without witnesses does.
        """
        states = tuple(self.state[p.url].policy_state() for p in peers)
        if not states and self._written is None:
            return
        wall = self.clock()
        policy = WitnessPolicy(states, self.quorum, self.stale_after, wall)
        stale = {w.name: w for w in policy.stale(wall)}
        for name in sorted(stale.keys() - self._warned_stale):
            w = stale[name]
            logger.warning(
                "witness %s of %s is stale since size %s (failing for %.0f s: %s); "
                "the witnessed checkpoint no longer waits for it",
                w.name,
                self.log.origin,
                w.size if w.size is not None else "- (it never cosigned)",
                wall - (w.failing_since or wall),
                w.error,
            )
        self._warned_stale = set(stale)
        if policy.same_as(self._written):
            return
        try:
            self.log.set_witness_policy(policy)
        except OSError as e:
            logger.warning("witnessing %s: cannot write its witness policy: %s", self.log.origin, e)
            return
        self._written = policy

    def snapshot(self) -> list[dict[str, Any]]:
        wall = self.clock()
        return [
            s.to_json()
            | {"stale": s.failing_since is not None and wall - s.failing_since >= self.stale_after}
            for s in self.state.values()
        ]
