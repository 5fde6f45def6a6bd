"""A durable, append-only RFC 9162 transparency log in one folder (see :mod:`.storage`).

``TransparencyLog`` is the one implementation behind every site's ``SITE/log``
and the hub's log: append (single or batched, durable before it returns, safe
across processes through ``fcntl.flock``), read entries by range, sign C2SP
checkpoints, answer RFC 9162 inclusion and consistency proofs in O(log n)
reads, collect witness cosignatures, and ``fsck`` every stored hash against the
entries (a single flipped bit in a stored leaf hash froze CT log Yeti2022 for
good; this finds it).

Growing past one machine
------------------------
The folder is already the C2SP tlog-tiles data model in another packing: the
post-order ``hashes`` file holds every full tile's hashes, ``entries`` holds the
entry bundles, ``checkpoint`` is the tiles ``checkpoint`` file. Publishing the
log for any number of readers is a static export of ``tile/L/N`` (256 hashes per
full tile, N in 3-digit groups ``x001/x234/067``), ``tile/entries/N`` (uint16
big-endian length-prefixed entries) and ``checkpoint`` to an object store or CDN,
as Trillian Tessera and Sunlight do: reads then never touch the appender. Writes
stay with one sequencer per log (it is cheap: one fsync'd batch), and more logs
(one per site already, sharded by time for the hub) scale writes out; witnesses
keep each shard honest. :meth:`TransparencyLog.export_tiles` writes such tiles.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time as _time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit import merkle
from dataspace.audit.checkpoint import Checkpoint, check_origin, open_checkpoint, parse_checkpoint
from dataspace.audit.merkle import ProofError
from dataspace.audit.note import (
    NoteError,
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
    KEEP_COSIGNED,
    META,
    WITNESSES,
    Files,
    LogCorruptError,
    LogError,
    atomic_write,
    fsync_dir,
    locked,
    peaks_of,
    stored_nodes,
)
from dataspace.audit.witnesspolicy import (
    WitnessPolicy,
    WitnessPolicyError,
    WitnessState,
    parse_policy,
)

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
        peaks = list(self._peak_hashes(n))
        out = bytearray()
        size = n
        for e in batch:
            h = sha256(b"\x00" + e).digest()
            out += h
            size += 1
            m = size
            while not m & 1:
                h = sha256(b"\x01" + peaks.pop() + h).digest()
                out += h
                m >>= 1
            peaks.append(h)
        _pwrite_all(f.hashes, bytes(out), stored_nodes(n) * HASH)
        os.fsync(f.hashes)
        # 3. the index: the commit record
        ends, off = [], start
        for e in batch:
            off += len(e)
            ends.append(off)
        _pwrite_all(f.index, struct.pack(f">{len(ends)}Q", *ends), n * 8)
        os.fsync(f.index)
        self._peaks = (size, peaks)

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
        if self.signer is not None and (note is None or _size_of(note) < self.size):
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
        if note is not None and _size_of(note) >= n:
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
            cp = open_checkpoint(_log_signed_part(note, self.verifier), self.verifier)
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

    # --- cosigned checkpoints (kept per size: witnesses answer after the log moved on) ----
    @property
    def cosigned_dir(self) -> Path:
        return self.directory / COSIGNED

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

    def _keep(self, cp: Checkpoint, body: bytes, sig, signed: bytes | None = None) -> bytes:
        """Under the lock: merge ``sig`` into cosigned/N and, if it is that one, ``checkpoint``."""
        path = self.cosigned_dir / str(cp.size)
        current = self.stored_checkpoint()
        parsed = [parse_note(n) for n in (_read(path), current, signed) if n is not None]
        sigs = [s for n in parsed if n.text == body for s in n.signatures]
        own = [
            s
            for s in sigs
            if (s.name, s.key_id) == (self.origin, self.verifier.key_id)
            and self.verifier.verify(body, s.sig)
        ]
        if not own:
            if self.signer is None:
                raise LogError(f"{self.directory}: no log signature for size {cp.size} to keep")
            own = [self.signer.sign(body)]
        merged: dict[tuple[str, bytes], Any] = {(own[0].name, own[0].key_id): own[0]}
        for s in sigs:
            merged.setdefault((s.name, s.key_id), s)
        merged[(sig.name, sig.key_id)] = sig  # a newer cosignature of the same witness wins
        note = body + b"\n" + b"".join(s.line() for s in merged.values())
        if not self.cosigned_dir.is_dir():
            self.cosigned_dir.mkdir(exist_ok=True)
            fsync_dir(self.directory)
        atomic_write(path, note)
        if current is not None and parse_note(current).text == body:
            atomic_write(self.checkpoint_path, note)
        for old in self._cosigned_sizes()[:-KEEP_COSIGNED]:
            (self.cosigned_dir / str(old)).unlink(missing_ok=True)
        return note

    def _cosigned_sizes(self) -> list[int]:
        try:
            names = os.listdir(self.cosigned_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def cosigned_checkpoints(self) -> list[bytes]:
        """The kept cosigned checkpoints, smallest first: those whose log signature
        verifies and whose root is the stored tree's (``fsck`` names the others)."""
        out = []
        for size in self._cosigned_sizes():
            note = _read(self.cosigned_dir / str(size))
            if note is not None and self._cosigned_problem(size, note) is None:
                out.append(note)
        return out

    def _cosigned_problem(self, size: int, note: bytes) -> str | None:
        try:
            cp = open_checkpoint(_log_signed_part(note, self.verifier), self.verifier)
        except NoteError as e:
            return str(e)
        if cp.size != size or cp.size > self.size or self.root(cp.size) != cp.root:
            return f"checkpoint of size {cp.size} is not the stored tree's"
        return None

    def witnessed_checkpoint(
        self, policy: WitnessPolicy | None = None, now: float | None = None
    ) -> bytes:
        """The newest checkpoint its witnesses cosigned, with its cosignatures.

        With a witness policy (``policy``, else ``witnesses.json`` as the pusher wrote
        it; :mod:`.witnesspolicy`): the newest kept or latest checkpoint that
        satisfies it, so a witness that is gone for good stops holding it back
        once stale, and a witness removed from the configuration at once; when
        none satisfies it, the newest one cosigned by any current witness.

        Without a policy (a log nobody pushes as a service): "fully" cosigned,
        by every witness that cosigned any checkpoint kept in ``cosigned/``. The
        latest checkpoint is returned when it is fully cosigned or when no
        cosigned checkpoint is kept; when none is fully cosigned, the one with
        the most witnesses (then the largest).
        """
        latest = self.stored_checkpoint() if self.signer is None else self.checkpoint()
        return self._witnessed(latest, self.cosigned_checkpoints(), policy, now)

    def _witnessed(
        self,
        latest: bytes | None,
        kept: list[bytes],
        policy: WitnessPolicy | None,
        now: float | None,
    ) -> bytes:
        if latest is None:
            if not kept:
                raise LogError(f"{self.directory} has no checkpoint yet")
            latest = kept[-1]
        cands = [latest, *reversed(kept)]
        names = [self._witness_names(n) for n in cands]
        policy = self.witness_policy() if policy is None else policy
        if policy is not None and not policy.witnesses:
            return latest  # every witness was removed: nothing to wait for
        if policy is not None:
            now = _time.time() if now is None else now
            sizes = [_size_of(n) for n in cands]
            for note, size, who in zip(cands, sizes, names, strict=True):
                if policy.satisfied(size, who, now):
                    return note
            current = policy.names
            best = max(range(len(cands)), key=lambda i: (bool(names[i] & current), sizes[i]))
            return cands[best]
        everyone = set().union(*names)
        for note, who in zip(cands, names, strict=True):
            if who >= everyone:
                return note
        best = max(range(len(cands)), key=lambda i: (len(names[i]), _size_of(cands[i])))
        return cands[best]

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
            return parse_policy(data)
        except WitnessPolicyError:
            return None

    def set_witness_policy(self, policy: WitnessPolicy) -> None:
        """Store the current witness set and its state (atomically; one pusher per log)."""
        atomic_write(self.policy_path, policy.encode())

    def last_cosigned(self, kept: list[bytes] | None = None) -> dict[str, int]:
        """Witness name -> the largest kept (or latest) checkpoint size it cosigned."""
        out: dict[str, int] = {}
        latest = self.stored_checkpoint()
        kept = self.cosigned_checkpoints() if kept is None else kept
        for note in [*kept, *([latest] if latest else [])]:
            size = _size_of(note)
            for name in self._witness_names(note):
                out[name] = max(out.get(name, 0), size)
        return out

    def witnessing_status(self, now: float | None = None) -> dict[str, Any]:
        """Who witnesses this log, how far, and which witness is stale since which size.

        ``witnesses`` lists the current witnesses (from the policy; without one,
        every witness of a kept checkpoint), each with the largest size it
        cosigned, whether it cosigned the witnessed checkpoint, whether it is
        stale (failing for ``stale_after_s`` s: it no longer holds the
        witnessed checkpoint back), since when it fails and why.
        """
        now = _time.time() if now is None else now
        policy = self.witness_policy()
        latest = self.stored_checkpoint() if self.signer is None else self.checkpoint()
        kept = self.cosigned_checkpoints()  # read and checked once for all three uses
        witnessed = self._witnessed(latest, kept, policy, now)
        wsize = _size_of(witnessed)
        cosigners = self._witness_names(witnessed)
        seen = self.last_cosigned(kept)
        states = (
            list(policy.witnesses)
            if policy is not None and policy.witnesses
            else [WitnessState(n) for n in sorted(seen)]
        )
        stale_after = policy.stale_after if policy is not None else None
        rows = []
        for w in states:
            sizes = [x for x in (w.size, seen.get(w.name)) if x is not None]
            size = max(sizes) if sizes else None
            stale = stale_after is not None and w.stale(now, stale_after)
            rows.append(
                {
                    "witness": w.name,
                    "url": w.url,
                    "size": size,
                    "cosigned_witnessed": w.name in cosigners,
                    "stale": stale,
                    "stale_since_size": size if stale else None,
                    "failing_since": w.failing_since,
                    "error": w.error,
                    "status": w.status,
                }
            )
        return {
            "origin": self.origin,
            "size": _size_of(latest) if latest else 0,
            "witnessed_size": wsize,
            "witnesses": rows,
            "stale": [r["witness"] for r in rows if r["stale"]],
            "quorum": policy.quorum if policy is not None else None,
            "stale_after_s": stale_after,
            "policy": policy is not None,
        }

    def _witness_names(self, note: bytes) -> set[str]:
        return {s.name for s in parse_note(note).signatures} - {self.origin}

    # --- integrity --------------------------------------------------------------------
    def fsck(self) -> FsckReport:
        """Re-derive every stored hash from the entries and compare; check the checkpoint.

        Streams the files once, in O(log n) memory besides a chunk of entries.
        """
        n = self.size
        report = FsckReport(n)
        f = self._files
        peaks: list[bytes] = []
        pos, size = 0, 0
        expect = stored_nodes(n)
        if f.length(f.hashes) < expect * HASH:
            report.problems.append(f"{HASHES}: {f.length(f.hashes) // HASH} hashes, need {expect}")
            return report
        try:
            for e in f.iter_entries(0, n):
                nodes = [sha256(b"\x00" + e).digest()]
                size += 1
                m = size
                h = nodes[0]
                while not m & 1:
                    h = sha256(b"\x01" + peaks.pop() + h).digest()
                    nodes.append(h)
                    m >>= 1
                peaks.append(h)
                stored = f.read_hashes(pos, len(nodes))
                if stored != b"".join(nodes):
                    report.problems.append(
                        f"entry {size - 1}: stored hashes at nodes {pos}..{pos + len(nodes) - 1} "
                        "differ from the hashes re-derived from the entry"
                    )
                    if len(report.problems) >= 20:
                        return report
                pos += len(nodes)
        except LogCorruptError as e:
            report.problems.append(str(e))
            return report
        try:
            self._check_checkpoint()
        except LogCorruptError as e:
            report.problems.append(str(e))
        for size in self._cosigned_sizes():
            note = _read(self.cosigned_dir / str(size)) or b""
            problem = self._cosigned_problem(size, note)
            if problem is not None:
                report.problems.append(f"{COSIGNED}/{size}: {problem}")
        policy = _read(self.policy_path)
        if policy is not None:
            try:
                parse_policy(policy)
            except WitnessPolicyError as e:
                report.problems.append(
                    f"{WITNESSES}: {e} (ignored: the witnessed checkpoint "
                    "falls back to every witness of the kept checkpoints)"
                )
        return report

    # --- tiles (C2SP tlog-tiles static export) ---------------------------------------------
    def export_tiles(self, out: Path | str) -> int:
        """Write the log as C2SP tlog-tiles static files under ``out``; returns files written.

        Full tiles only are hashed upward; partial tiles are written as ``.p/W``.
        """
        out = Path(out)
        note = self.checkpoint()
        size = _size_of(note)
        written = 0
        level = 0
        while True:
            # tile level L covers tree levels 8L .. 8L+7; its hashes are nodes at level 8L
            tree_level = 8 * level
            count = size >> tree_level
            if count == 0:
                break
            for t in range(0, (count + 255) // 256):
                w = min(256, count - t * 256)
                data = b"".join(self._files.node(tree_level, t * 256 + i) for i in range(w))
                path = out / "tile" / str(level) / _tile_path(t, None if w == 256 else w)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                written += 1
            level += 1
        for t in range(0, (size + 255) // 256):
            w = min(256, size - t * 256)
            es = self._files.read_entries(t * 256, t * 256 + w)
            data = b"".join(struct.pack(">H", len(e)) + e for e in es if len(e) < 65536)
            path = out / "tile" / "entries" / _tile_path(t, None if w == 256 else w)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written += 1
        (out / "checkpoint").write_bytes(note)
        return written + 1


def _tile_path(n: int, partial: int | None) -> str:
    """tlog-tiles: N in 3-digit path elements, all but the last prefixed with x."""
    digits = f"{n:03d}"
    while len(digits) % 3:
        digits = "0" + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    p = "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])
    return p + (f".p/{partial}" if partial else "")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _size_of(note: bytes) -> int:
    return parse_checkpoint(parse_note(note).text).size


def _log_signed_part(note: bytes, verifier: Verifier) -> bytes:
    """The note with only the log's own signature line (drops cosignatures)."""
    parsed = parse_note(note)
    own = [s for s in parsed.signatures if (s.name, s.key_id) == (verifier.name, verifier.key_id)]
    if not own:
        raise LogCorruptError(f"checkpoint carries no signature of the log key {verifier.name}")
    return parsed.text + b"\n" + b"".join(s.line() for s in own)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
