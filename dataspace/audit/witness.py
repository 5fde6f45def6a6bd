"""A C2SP tlog-witness v1 (https://c2sp.org/tlog-witness) that cosigns checkpoints.

Connectors witness the hub's log and each other's: a witness keeps, per origin,
the latest checkpoint it has cosigned; it cosigns a new one only after checking
the log's signature and an RFC 9162 consistency proof from that latest one, and
it persists the new checkpoint (atomically, under a lock: check-and-update is one
step, otherwise a race could roll a witness back) before it answers. So a log
cannot show two histories to parties that consult the same witnesses.

Request body of ``POST /add-checkpoint``: ``old SIZE\\n``, up to 63 base64
consistency-proof lines, an empty line, then the signed checkpoint. Answers
(:class:`WitnessError.status`): 404 unknown origin; 403 no trusted log
signature; 400 malformed or old size larger than the checkpoint's; 409 old size
is not the witness's latest (body: that size, ``text/x.tlog.size``); 422 bad
consistency proof, or the same size with a different root (a fork). A
checkpoint refused with 422 is kept (``refused/``, :meth:`Witness.refused`): with
the one the witness cosigned, it is the evidence that the log showed two histories.

The state kept per log is the log-signed checkpoint with the cosignature this witness
returned for it: tlog-witness "Monitor Retrieval Mechanism" serves it, ``GET <monitoring
prefix>/<hex SHA-256 of the origin>/checkpoint`` (:meth:`Witness.monitor_checkpoint`).
A witness cosigns with a key of its own, never a log's (:mod:`.witnesskey`).

A log is its key, not its name: the witness trusts one key per origin (the first it
is given: a key it was configured with, pinned, is never replaced by one learned
later, e.g. from a catalog), and keeps its state and its evidence per (origin, key).
A second key that signs under a log's name therefore starts a history of its own; it
can neither move the real log's state nor have the real log's checkpoints refused
and kept as "fork evidence" against it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time as _time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit import merkle
from dataspace.audit.checkpoint import Checkpoint, parse_checkpoint
from dataspace.audit.cosignature import cosign, cosigner, witness_vkey
from dataspace.audit.merkle import ProofError
from dataspace.audit.note import NoteError, Verifier, open_note, parse_note
from dataspace.audit.storage import atomic_write, locked
from dataspace.audit.witnesskey import check_distinct
from dataspace.errors import DataspaceError

MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"
#: where a witness keeps the checkpoints it refused as inconsistent (422), and how many
REFUSED = "refused"
KEEP_REFUSED = 16


class WitnessError(DataspaceError):
    """A checkpoint the witness refuses; ``status`` is the tlog-witness HTTP status."""

    def __init__(self, status: int, message: str, body: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.http_status = status
        self.body = body


def request_body(old_size: int, proof: Iterable[bytes], note: bytes) -> bytes:
    """tlog-witness: the add-checkpoint request body."""
    lines = [b"old %d\n" % old_size, *(base64.b64encode(p) + b"\n" for p in proof)]
    return b"".join(lines) + b"\n" + note


def parse_request(body: bytes) -> tuple[int, list[bytes], bytes]:
    """Split an add-checkpoint request into (old size, proof hashes, checkpoint note)."""
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise WitnessError(400, "add-checkpoint: no empty line before the checkpoint")
    lines = head.split(b"\n")
    first = lines[0]
    if not first.startswith(b"old ") or not first[4:].isdigit():
        raise WitnessError(400, f"add-checkpoint: first line {first[:40]!r} is not 'old SIZE'")
    if first[4:] != b"0" and first[4:5] == b"0":
        raise WitnessError(400, "add-checkpoint: old size has leading zeros")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessError(400, f"add-checkpoint: more than {MAX_PROOF_LINES} proof lines")
    try:
        proof = [base64.b64decode(ln, validate=True) for ln in lines[1:]]
    except binascii.Error as e:
        raise WitnessError(400, f"add-checkpoint: proof line is not base64: {e}") from e
    return int(first[4:]), proof, note


class Witness:
    """A witness keeping its state in a folder (e.g. SITE/witness).

    ``logs`` are the trusted log keys (type 0x01); a log's key name is its origin. Pinned
    keys come first: for a name given twice with different keys, the first is kept.
    """

    def __init__(
        self,
        directory: Path | str,
        name: str,
        key: Ed25519PrivateKey,
        logs: Iterable[Verifier],
        clock: Callable[[], float] = _time.time,
        *,
        log_keys: Iterable[bytes] = (),
    ) -> None:
        """``log_keys``: the service's own log key(s); the witness key must not be one
        (:class:`~dataspace.audit.witnesskey.WitnessKeyError`), nor a key it trusts as a log's."""
        self.directory = Path(directory)
        check_distinct(key, list(log_keys))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.signer = cosigner(name, key)
        #: what ``GET .../witness-key`` answers: this key endorsed by the service's
        #: identity (:func:`dataspace.audit.witnesskey.endorse`); set by the service
        self.endorsement: bytes | None = None
        self.logs: dict[str, Verifier] = {}
        for v in logs:
            self.trust(v)
        self.clock = clock

    @property
    def name(self) -> str:
        return self.signer.name

    def vkey(self) -> str:
        return witness_vkey(self.name, self.signer.public_key)

    def trust(self, log: Verifier) -> bool:
        """Trust ``log`` for its name, unless another key is trusted for that name already
        (that one stays: a log is its key). Returns whether ``log`` is trusted now. A log
        signing with this witness's own key is never trusted (one key, one role)."""
        if log.public_key == self.signer.public_key:
            return False
        have = self.logs.setdefault(log.name, log)
        return have.public_key == log.public_key

    def _key(self, origin: str, key: bytes | None) -> bytes | None:
        if key is not None:
            return key
        v = self.logs.get(origin)
        return v.public_key if v is not None else None

    def state_path(self, origin: str, key: bytes | None = None) -> Path:
        """Where the latest checkpoint of ``origin`` signed by ``key`` (default: the key
        trusted for it) this witness cosigned is kept: the log-signed note, which an
        auditor can use as its ``--previous-checkpoint``. With no key known, the one
        state kept for ``origin`` (of whichever key), if there is exactly one."""
        k = self._key(origin, key)
        if k is not None:
            return self.directory / f"{_origin_id(origin)}.{_key_id(k)}.checkpoint"
        kept = sorted(self.directory.glob(f"{_origin_id(origin)}.*.checkpoint"))
        if len(kept) > 1:
            raise WitnessError(409, f"{origin} has states for {len(kept)} keys: name the key")
        return kept[0] if kept else self._legacy_path(origin)

    def _legacy_path(self, origin: str) -> Path:
        """Where witnesses kept a log's state before it was kept per key (by name only)."""
        return self.directory / f"{_origin_id(origin)}.checkpoint"

    def latest(self, origin: str, key: bytes | None = None) -> Checkpoint | None:
        """The latest checkpoint of ``origin`` (signed by ``key``, default: the key trusted
        for it) this witness has cosigned, if any."""
        note = self._latest_note(origin, key)
        return None if note is None else parse_checkpoint(parse_note(note).text)

    def _latest_note(self, origin: str, key: bytes | None) -> bytes | None:
        try:
            return self.state_path(origin, key).read_bytes()
        except FileNotFoundError:
            pass
        # a state kept by name only (before states were per key) is this key's if this
        # key signed it; a note another key signed there is not
        k = self._key(origin, key)
        try:
            note = self._legacy_path(origin).read_bytes()
        except FileNotFoundError:
            return None
        if k is None:
            return note
        try:
            open_note(note, [Verifier(origin, k)])
        except NoteError:
            return None
        return note

    def add_checkpoint(self, body: bytes) -> bytes:
        """Answer a tlog-witness add-checkpoint request body; returns the cosignature line."""
        old, proof, note = parse_request(body)
        return self.cosign_checkpoint(note, old, proof)

    def cosign_checkpoint(self, note: bytes, old_size: int, proof: list[bytes]) -> bytes:
        """Check ``note`` against the latest checkpoint seen, persist it, cosign it."""
        try:
            parsed = parse_note(note)
            cp = parse_checkpoint(parsed.text)
        except NoteError as e:
            raise WitnessError(400, f"add-checkpoint: malformed checkpoint: {e}") from e
        log = self.logs.get(cp.origin)
        if log is None:
            raise WitnessError(404, f"unknown log origin {cp.origin!r}")
        try:
            open_note(note, [log])
        except NoteError as e:
            raise WitnessError(403, f"checkpoint of {cp.origin}: {e}") from e
        if old_size > cp.size:
            raise WitnessError(
                400, f"old size {old_size} is larger than the checkpoint's {cp.size}"
            )
        own = [s for s in parsed.signatures if (s.name, s.key_id) == (log.name, log.key_id)]
        stored = parsed.text + b"\n" + b"".join(s.line() for s in own)
        with locked(self.directory):
            latest = self.latest(cp.origin, log.public_key)
            have = latest.size if latest else 0
            if old_size != have:
                raise WitnessError(
                    409,
                    f"old size {old_size} is not this witness's latest size {have} of {cp.origin}",
                    body=b"%d\n" % have,
                )
            old_root = latest.root if latest else merkle.EMPTY_ROOT
            if latest is not None and cp.size == latest.size:
                if cp.root != latest.root:
                    self._keep_refused(cp, stored, log.public_key)
                    raise WitnessError(422, f"fork: {cp.origin} has two roots for size {cp.size}")
            else:
                try:
                    merkle.verify_consistency(have, cp.size, proof, old_root, cp.root)
                except ProofError as e:
                    self._keep_refused(cp, stored, log.public_key)
                    raise WitnessError(422, f"{cp.origin}: bad consistency proof: {e}") from e
            # tlog-witness: persist before answering; with the cosignature returned, which
            # the monitoring route serves ("Monitor Retrieval Mechanism")
            line = cosign(parsed.text, self.signer, int(self.clock())).line()
            atomic_write(self.state_path(cp.origin, log.public_key), stored + line)
        return line

    def monitor_checkpoint(self, origin_hash: str) -> bytes:
        """tlog-witness "Monitor Retrieval Mechanism": the latest checkpoint this witness
        cosigned of the log whose origin hashes (SHA-256, lowercase hex) to ``origin_hash``,
        with the log's signature it verified and its own cosignature. Raises
        :class:`WitnessError` 404 when it never cosigned one (or the hash is not one)."""
        if len(origin_hash) != 64 or any(c not in "0123456789abcdef" for c in origin_hash):
            raise WitnessError(404, "not a lowercase hex SHA-256 of an origin")
        trusted = [o for o in self.logs if hashlib.sha256(o.encode()).hexdigest() == origin_hash]
        try:
            if trusted:
                note = self._latest_note(trusted[0], None)
            else:  # a log no longer trusted: its state, if exactly one key's is kept
                kept = sorted(self.directory.glob(f"{origin_hash[:32]}.*.checkpoint"))
                note = kept[0].read_bytes() if len(kept) == 1 else None
        except FileNotFoundError:
            note = None
        if note is None:
            raise WitnessError(404, "this witness never cosigned a checkpoint of that log")
        parsed = parse_note(note)
        cp = parse_checkpoint(parsed.text)
        if hashlib.sha256(cp.origin.encode()).hexdigest() != origin_hash:
            raise WitnessError(404, "this witness never cosigned a checkpoint of that log")
        mine = (self.name, self.signer.key_id)
        if any((s.name, s.key_id) == mine for s in parsed.signatures):
            return note
        # a state kept before cosignatures were kept with it: cosign it now (it is still
        # the largest consistent tree this witness saw of that log, as of now)
        return note + cosign(parsed.text, self.signer, int(self.clock())).line()

    # --- evidence: the log-signed checkpoints refused as inconsistent ---------------------
    def _refused_prefix(self, origin: str, key: bytes | None = None) -> str:
        k = self._key(origin, key)
        return f"{_origin_id(origin)}." + (f"{_key_id(k)}." if k is not None else "")

    def _keep_refused(self, cp: Checkpoint, note: bytes, key: bytes) -> None:
        """Under the lock: keep a refused checkpoint (its log signature only), the newest
        KEEP_REFUSED per origin. With the kept one of the same size it proves a fork
        (two signed roots for one size); a larger one is for an auditor to check
        (``dataspace audit verify LOG --previous-checkpoint THAT``)."""
        d = self.directory / REFUSED
        d.mkdir(exist_ok=True)
        prefix = self._refused_prefix(cp.origin, key)
        atomic_write(d / f"{prefix}{cp.size}.{cp.root.hex()[:16]}.checkpoint", note)
        mine = sorted(d.glob(prefix + "*.checkpoint"), key=lambda p: p.stat().st_mtime_ns)
        for old in mine[:-KEEP_REFUSED]:
            old.unlink(missing_ok=True)

    def refused(self, origin: str, key: bytes | None = None) -> list[bytes]:
        """The signed checkpoints of ``origin`` (signed by ``key``, default: the key trusted
        for it; with none known, by any key) this witness refused as inconsistent with what
        it cosigned (422), oldest first: evidence that the log showed two histories."""
        d = self.directory / REFUSED
        if not d.is_dir():
            return []
        mine = sorted(d.glob(self._refused_prefix(origin, key) + "*.checkpoint"), key=_mtime)
        out = []
        for p in mine:
            try:
                out.append(p.read_bytes())
            except FileNotFoundError:
                continue
        return out


PostFn = Callable[[bytes], tuple[int, bytes]]


def witness_log(log, post: PostFn, known_size: int = 0) -> bytes:
    """Have a witness cosign ``log``'s current checkpoint, and store the cosignature.

    ``post(body) -> (status, response body)`` delivers an add-checkpoint request
    (over HTTP, or ``local_post(witness)`` in process). A 409 tells the witness's
    size; the request is retried once from there. Returns the cosignature line.
    """
    note = log.checkpoint()
    parsed = parse_note(note)
    cp = parse_checkpoint(parsed.text)
    size = known_size
    for _ in range(2):
        proof = log.consistency_proof(size, cp.size) if size < cp.size else []
        status, resp = post(request_body(size, proof, note))
        if status == 200:
            log.add_cosignature(parsed.text, resp)
            return resp
        if status == 409:
            size = int(resp.strip() or b"0")
            continue
        raise WitnessError(status, f"witness refused {cp.origin} size {cp.size}: {resp[:200]!r}")
    raise WitnessError(409, f"witness kept answering 409 for {cp.origin}")


def local_post(witness: Witness) -> PostFn:
    """A ``post`` function that calls a :class:`Witness` in this process."""

    def post(body: bytes) -> tuple[int, bytes]:
        try:
            return 200, witness.add_checkpoint(body)
        except WitnessError as e:
            return e.status, e.body or str(e).encode()

    return post


def _origin_id(origin: str) -> str:
    """A log's name as a file name part."""
    return hashlib.sha256(origin.encode()).hexdigest()[:32]


def _key_id(public_key: bytes) -> str:
    """A log's key as a file name part."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _mtime(path: Path) -> int:
    """A file's modification time; 0 when a concurrent prune removed it meanwhile."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
