"""A durable, append-only RFC 9162 transparency log in one folder (see :mod:`.storage`).

``TransparencyLog`` is the one implementation behind every site's ``SITE/log``
and the hub's log: append (single or batched, durable before it returns, safe
across processes through ``fcntl.flock``), read entries by range, sign C2SP
checkpoints, answer RFC 9162 inclusion and consistency proofs in O(log n)
reads, keep witness cosignatures and serve the witnessed checkpoint
(:mod:`.cosigning`), and ``fsck`` every stored hash against the entries (a
single flipped bit in a stored leaf hash froze CT log Yeti2022 for good; this
finds it). Growing past one machine: :mod:`.tiles` exports the folder as C2SP
tlog-tiles static files.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time as _time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit import cosigning, merkle
from dataspace.audit.checkpoint import (
    Checkpoint,
    check_origin,
    checkpoint_of_note,
    open_checkpoint,
    parse_checkpoint,
)
from dataspace.audit.merkle import ProofError
from dataspace.audit.note import (
    NoteError,
    Signature,
    Signer,
    Verifier,
    parse_note,
    parse_signature_line,
    raw_public,
)
from dataspace.audit.storage import (
    CHECKPOINT,
    COSIGNED,
    ENTRIES,
    FORMAT,
    HASH,
    HASHES,
    INDEX,
    META,
    WITNESSES,
    Files,
    LogCorruptError,
    LogError,
    atomic_write,
    locked,
    peaks_of,
    stored_nodes,
)
from dataspace.audit.witnesspolicy import WitnessPolicy, WitnessPolicyError, parse_witness_policy

__all__ = ["FsckReport", "LogCorruptError", "LogError", "TransparencyLog"]

#: refuse absurd entries early (the tiles format caps an entry at 64 KiB; we allow more)
MAX_ENTRY = 1 << 20


@dataclass
class FsckReport:
    size: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_entry(i: int, e: bytes) -> None:
    if not isinstance(e, bytes | bytearray):
        raise LogError(f"entry {i} is {type(e).__name__}, not bytes")
    if not e or b"\n" in e or len(e) > MAX_ENTRY:
        raise LogError(
            f"entry {i} is empty, longer than {MAX_ENTRY} bytes or contains a newline "
            "(entries are single lines so that a bundle stores one per line)"
        )


class TransparencyLog:
    """One log folder. Cheap to open; reads need no lock, appends take ``LOG/lock``."""

    def __init__(self, directory: Path, origin: str, public_key: bytes, key=None) -> None:
        self.directory = Path(directory)
        self.origin = origin
        self.public_key = public_key
        self.signer = Signer(origin, key) if key is not None else None
        self.verifier = Verifier(origin, public_key)
        self._files = Files(self.directory, writable=key is not None)
        self._kept = cosigning.KeptCheckpoints(self.directory)
        self._peaks: tuple[int, list[bytes]] | None = None

    # --- lifecycle ----------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path | str, origin: str, key: Ed25519PrivateKey) -> TransparencyLog:
        """Make an empty log whose checkpoints ``key`` signs under the key name ``origin``."""
        directory = Path(directory)
        check_origin(origin)
        if (directory / META).exists():
            raise LogError(f"{directory} already holds a log; refusing to overwrite it")
        directory.mkdir(parents=True, exist_ok=True)
        for name in (ENTRIES, INDEX, HASHES):
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.fsync(fd)
            os.close(fd)
        meta = {"format": FORMAT, "origin": origin, "public_key": _b64(raw_public(key))}
        atomic_write(directory / META, (json.dumps(meta, indent=2) + "\n").encode())
        log = cls(directory, origin, raw_public(key), key)
        log.checkpoint()  # the signed empty tree, so every log has a checkpoint
        return log

    @classmethod
    def open(cls, directory: Path | str, key: Ed25519PrivateKey | None = None) -> TransparencyLog:
        """Open a log; with ``key`` it may append and sign. Recovers a torn tail when writable."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META).read_text())
            if meta.get("format") != FORMAT:
                raise LogError(f"{directory / META}: unknown format {meta.get('format')!r}")
            origin, pub = meta["origin"], base64.b64decode(meta["public_key"], validate=True)
        except FileNotFoundError as e:
            raise LogError(f"{directory} is not a log folder (no {META})") from e
        except (ValueError, KeyError, TypeError) as e:
            raise LogCorruptError(f"{directory / META} is malformed: {e}") from e
        if key is not None and raw_public(key) != pub:
            raise LogError(f"{directory}: the given key is not this log's key")
        log = cls(directory, origin, pub, key)
        if key is not None:
            with locked(directory):
                log._recover()
        log._check_checkpoint()
        return log

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> TransparencyLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading ------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Entries committed (durable) so far, as seen now by any process."""
        return self._files.committed_size()

    def _check_range(self, start: int, end: int, size: int) -> None:
        if not 0 <= start <= end <= size:
            raise LogError(f"entries [{start}, {end}) are not in a log of size {size}")

    def entries(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """The entries [start, end): exactly the bytes that were hashed."""
        size = self.size
        end = size if end is None else end
        self._check_range(start, end, size)
        return self._files.read_entries(start, end)

    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Like :meth:`entries`, streamed in chunks (bounded memory for big logs)."""
        size = self.size
        end = size if end is None else end
        self._check_range(start, end, size)
        return self._files.iter_entries(start, end)

    def node(self, level: int, k: int) -> bytes:
        return self._files.node(level, k)

    def subtree(self, start: int, end: int) -> bytes:
        return merkle.subtree_hash(start, end, self._files.node)

    def root(self, size: int | None = None) -> bytes:
        """RFC 9162 2.1.1 MTH of the first ``size`` entries, from the stored nodes."""
        n = self.size
        size = n if size is None else size
        if not 0 <= size <= n:
            raise ProofError(f"no root for size {size}: the log has {n} entries")
        return self.subtree(0, size)

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise ProofError(f"index {index} is beyond the log of size {self.size}")
        return self._files.node(0, index)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 2.1.3.1 audit path of entry ``index`` in the tree of ``size`` entries."""
        n = self.size
        size = n if size is None else size
        if size > n:
            raise ProofError(f"no proof for tree size {size}: the log has {n} entries")
        return merkle.inclusion_proof(index, size, self.subtree)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """RFC 9162 2.1.4.1 consistency proof between the trees of ``old`` and ``new`` entries."""
        n = self.size
        new = n if new is None else new
        if new > n:
            raise ProofError(f"no proof for tree size {new}: the log has {n} entries")
        return merkle.consistency_proof(old, new, self.subtree)

    # --- appending ------------------------------------------------------------------
    def append(self, entry: bytes, publish: bool = True) -> int:
        """Append one entry; durable when this returns. Returns its index."""
        return self.append_many([entry], publish=publish)[0]

    def append_many(self, entries: Iterable[bytes], publish: bool = True) -> list[int]:
        """Append a batch in one commit (three fsyncs); durable when this returns.

        With ``publish`` (and a key) a new checkpoint covering the batch is signed
        and stored before returning, so every acknowledged entry is covered by the
        latest signed checkpoint (as Sunlight and Rekor v2 do).
        """
        batch = [bytes(e) for e in entries]
        for i, e in enumerate(batch):
            _check_entry(i, e)
        if self.signer is None:
            raise LogError(f"{self.directory}: opened without its key; cannot append")
        if not batch:
            return []
        with locked(self.directory):
            n = self._recover()
            self._commit(n, batch)
            if publish:
                self._publish()
        return list(range(n, n + len(batch)))

    def _commit(self, n: int, batch: Sequence[bytes]) -> None:
        f = self._files
        start = f.end_offset(n)
        # 1. entries
        blob = b"".join(batch)
        _pwrite_all(f.entries, blob, start)
        os.fsync(f.entries)
        # 2. hashes, post-order: each leaf, then the perfect subtrees it completes
        tree = merkle.RootAccumulator(n, self._peak_hashes(n))
        out = bytearray()
        for e in batch:
            tree.add(e, out)
        _pwrite_all(f.hashes, bytes(out), stored_nodes(n) * HASH)
        os.fsync(f.hashes)
        # 3. the index: the commit record
        ends, off = [], start
        for e in batch:
            off += len(e)
            ends.append(off)
        _pwrite_all(f.index, struct.pack(f">{len(ends)}Q", *ends), n * 8)
        os.fsync(f.index)
        self._peaks = (tree.size, tree.peaks)

    def _peak_hashes(self, n: int) -> list[bytes]:
        if self._peaks is not None and self._peaks[0] == n:
            return self._peaks[1]
        return [self._files.node(level, k) for level, k in peaks_of(n)]

    def _recover(self) -> int:
        """Under the lock: drop a torn tail no append acknowledged; check the files agree."""
        f = self._files
        n = f.committed_size()
        if f.length(f.index) != n * 8:
            os.ftruncate(f.index, n * 8)
            os.fsync(f.index)
        end = f.end_offset(n)
        have = f.length(f.entries)
        if have < end:
            raise LogCorruptError(
                f"{self.directory / ENTRIES} is truncated: {have} bytes, the index needs {end}"
            )
        nodes = stored_nodes(n) * HASH
        have_h = f.length(f.hashes)
        if have_h < nodes:
            raise LogCorruptError(
                f"{self.directory / HASHES} is truncated: {have_h} bytes, {n} entries need {nodes}"
            )
        if have > end:
            os.ftruncate(f.entries, end)
            os.fsync(f.entries)
        if have_h > nodes:
            os.ftruncate(f.hashes, nodes)
            os.fsync(f.hashes)
        return n

    # --- checkpoints ----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.directory / CHECKPOINT

    def stored_checkpoint(self) -> bytes | None:
        try:
            return self.checkpoint_path.read_bytes()
        except FileNotFoundError:
            return None

    def checkpoint(self) -> bytes:
        """The latest signed checkpoint (with any cosignatures); newly signed if the tree grew."""
        note = self.stored_checkpoint()
        if self.signer is not None and (note is None or checkpoint_of_note(note).size < self.size):
            with locked(self.directory):
                self._recover()
                note = self._publish()
        if note is None:
            raise LogError(f"{self.directory} has no checkpoint yet")
        return note

    def _publish(self) -> bytes:
        """Under the lock: sign and atomically store a checkpoint of the current size."""
        note = self.stored_checkpoint()
        n = self._files.committed_size()
        if note is not None and checkpoint_of_note(note).size >= n:
            return note
        cp = Checkpoint(self.origin, n, self.root(n))
        body = cp.body()
        signed = body + b"\n" + self.signer.sign(body).line()  # type: ignore[union-attr]
        atomic_write(self.checkpoint_path, signed)
        return signed

    def _check_checkpoint(self) -> None:
        """The stored checkpoint must verify and agree with the stored tree."""
        note = self.stored_checkpoint()
        if note is None:
            return
        try:
            cp = open_checkpoint(cosigning.log_signed_part(note, self.verifier), self.verifier)
        except NoteError as e:
            raise LogCorruptError(f"{self.checkpoint_path}: {e}") from e
        n = self.size
        if cp.size > n:
            raise LogCorruptError(
                f"{self.checkpoint_path} covers {cp.size} entries but the log holds {n}"
            )
        if self.root(cp.size) != cp.root:
            raise LogCorruptError(
                f"{self.checkpoint_path}: root of size {cp.size} differs from the stored tree"
            )

    # --- cosigned checkpoints (kept per size: witnesses answer after the log moved on) ----
    def add_cosignature(self, body: bytes, line: bytes) -> bytes:
        """Attach a witness's cosignature line to the stored checkpoint with this ``body``.

        Replaces an earlier line of the same witness (name and key ID), and keeps
        the line in ``cosigned/N`` too (:meth:`keep_cosignature`). Raises
        :class:`LogError` when the stored checkpoint moved on to another body.
        """
        sig = parse_signature_line(line.rstrip(b"\n"))
        with locked(self.directory):
            note = self.stored_checkpoint()
            if note is None:
                raise LogError(f"{self.directory} has no checkpoint to cosign")
            if parse_note(note).text != body:
                raise LogError(
                    f"{self.checkpoint_path} moved on; cosignature by {sig.name} is for another one"
                )
            return self._keep(self._own_checkpoint(body), body, sig)

    def keep_cosignature(self, body: bytes, line: bytes, signed: bytes | None = None) -> bytes:
        """Keep a witness's cosignature of the checkpoint ``body`` (any size this log signed).

        tlog-cosignature: a cosignature signs the checkpoint body, so it stays
        valid after the log grows; it is kept in ``cosigned/N`` (N = the
        checkpoint's size, written atomically) with the log's signature and
        the other witnesses' lines, and attached to ``checkpoint`` as well while
        that is still the same checkpoint. Returns the cosigned note.
        ``signed`` is the signed note that was cosigned (its log signature is kept
        when neither ``checkpoint`` nor ``cosigned/N`` has one: a log opened
        without its key, whose checkpoint moved on meanwhile).
        Raises :class:`LogError` when ``body`` is not a checkpoint of this tree.
        """
        sig = parse_signature_line(line.rstrip(b"\n"))
        cp = self._own_checkpoint(body)
        with locked(self.directory):
            return self._keep(cp, body, sig, signed)

    def _own_checkpoint(self, body: bytes) -> Checkpoint:
        try:
            cp = parse_checkpoint(body)
        except NoteError as e:
            raise LogError(f"{self.directory}: not a checkpoint body: {e}") from e
        if cp.origin != self.origin or cp.size > self.size or self.root(cp.size) != cp.root:
            raise LogError(
                f"{self.directory}: checkpoint {cp.origin} size {cp.size} is not one of this "
                f"log's trees ({self.origin}, size {self.size})"
            )
        return cp

    def _keep(
        self, cp: Checkpoint, body: bytes, sig: Signature, signed: bytes | None = None
    ) -> bytes:
        """Under the lock: merge ``sig`` into cosigned/N and, if it is that one, ``checkpoint``."""
        current = self.stored_checkpoint()
        found = (self._kept.read(cp.size), current, signed)
        notes = [parse_note(n) for n in found if n is not None]
        own = cosigning.log_signature(body, notes, self.verifier)
        if own is None:
            if self.signer is None:
                raise LogError(f"{self.directory}: no log signature for size {cp.size} to keep")
            own = self.signer.sign(body)
        note = cosigning.merge_cosignature(body, notes, own, sig)
        self._kept.write(cp.size, note)
        if current is not None and parse_note(current).text == body:
            atomic_write(self.checkpoint_path, note)
        self._kept.prune()
        return note

    def cosigned_checkpoints(self) -> list[bytes]:
        """The kept cosigned checkpoints, smallest first: those whose log signature
        verifies and whose root is the stored tree's (``fsck`` names the others)."""
        out = []
        for size in self._kept.sizes():
            note = self._kept.read(size)
            if note is not None and self._cosigned_problem(size, note) is None:
                out.append(note)
        return out

    def _cosigned_problem(self, size: int, note: bytes) -> str | None:
        try:
            cp = open_checkpoint(cosigning.log_signed_part(note, self.verifier), self.verifier)
        except NoteError as e:
            return str(e)
        if cp.size != size or cp.size > self.size or self.root(cp.size) != cp.root:
            return f"checkpoint of size {cp.size} is not the stored tree's"
        return None

    def _latest(self) -> tuple[bytes | None, list[bytes]]:
        """The latest checkpoint (signed now if the tree grew and the key is here) and the
        kept cosigned ones; raises :class:`LogError` when there is neither."""
        latest = self.stored_checkpoint() if self.signer is None else self.checkpoint()
        kept = self.cosigned_checkpoints()
        if latest is None and not kept:
            raise LogError(f"{self.directory} has no checkpoint yet")
        return latest, kept

    def witnessed_checkpoint(
        self, policy: WitnessPolicy | None = None, now: float | None = None
    ) -> bytes:
        """The newest checkpoint its witnesses cosigned, with its cosignatures
        (:func:`.cosigning.witnessed`).

        The witness policy is ``policy``, else ``witnesses.json`` as the pusher wrote
        it (:mod:`.witnesspolicy`); without either, "fully" cosigned: by every witness
        that cosigned any checkpoint kept in ``cosigned/``.
        """
        latest, kept = self._latest()
        policy = self.witness_policy() if policy is None else policy
        now = _time.time() if now is None else now
        shown = latest if latest is not None else kept[-1]
        return cosigning.witnessed(shown, kept, self.origin, policy, now)

    def last_cosigned(self) -> dict[str, int]:
        """Witness name -> the largest kept (or latest) checkpoint size it cosigned."""
        latest = self.stored_checkpoint()
        notes = [*self.cosigned_checkpoints(), *([latest] if latest else [])]
        return cosigning.last_cosigned(notes, self.origin)

    def witnessing_status(self, now: float | None = None) -> dict[str, Any]:
        """Who witnesses this log, how far, and which witness is stale since which size
        (:func:`.cosigning.witnessing_status`)."""
        now = _time.time() if now is None else now
        policy = self.witness_policy()
        latest, kept = self._latest()  # the kept checkpoints are read and checked once
        return cosigning.witnessing_status(self.origin, latest, kept, policy, now)

    # --- the witness policy (written by the pusher; dataspace.audit.witnesspolicy) --------
    @property
    def policy_path(self) -> Path:
        return self.directory / WITNESSES

    def witness_policy(self) -> WitnessPolicy | None:
        """The policy the log's pusher wrote, if any (a malformed one is ignored: fsck names it)."""
        data = _read(self.policy_path)
        if data is None:
            return None
        try:
            return parse_witness_policy(data)
        except WitnessPolicyError:
            return None

    def set_witness_policy(self, policy: WitnessPolicy) -> None:
        """Store the current witness set and its state (atomically; one pusher per log)."""
        atomic_write(self.policy_path, policy.encode())

    # --- integrity --------------------------------------------------------------------
    def fsck(self) -> FsckReport:
        """Re-derive every stored hash from the entries and compare; check the checkpoint.

        Streams the files once, in O(log n) memory besides a chunk of entries.
        """
        n = self.size
        report = FsckReport(n)
        f = self._files
        tree = merkle.RootAccumulator()
        pos = 0
        expect = stored_nodes(n)
        if f.length(f.hashes) < expect * HASH:
            report.problems.append(f"{HASHES}: {f.length(f.hashes) // HASH} hashes, need {expect}")
            return report
        try:
            for e in f.iter_entries(0, n):
                nodes = bytearray()  # the hashes this entry adds, in the file's post-order
                tree.add(e, nodes)
                count = len(nodes) // HASH
                if f.read_hashes(pos, count) != nodes:
                    report.problems.append(
                        f"entry {tree.size - 1}: stored hashes at nodes {pos}..{pos + count - 1} "
                        "differ from the hashes re-derived from the entry"
                    )
                    if len(report.problems) >= 20:
                        return report
                pos += count
        except LogCorruptError as e:
            report.problems.append(str(e))
            return report
        try:
            self._check_checkpoint()
        except LogCorruptError as e:
            report.problems.append(str(e))
        for size in self._kept.sizes():
            note = self._kept.read(size) or b""
            problem = self._cosigned_problem(size, note)
            if problem is not None:
                report.problems.append(f"{COSIGNED}/{size}: {problem}")
        policy = _read(self.policy_path)
        if policy is not None:
            try:
                parse_witness_policy(policy)
            except WitnessPolicyError as e:
                report.problems.append(
                    f"{WITNESSES}: {e} (ignored: the witnessed checkpoint "
                    "falls back to every witness of the kept checkpoints)"
                )
        return report


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
