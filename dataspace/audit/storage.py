"""On-disk layout of one transparency log: three append-only files and a checkpoint.

::

    LOG/
      log.json     {"format", "origin", "public_key"}: written once at create
      entries      the entries, concatenated (the exact bytes that are hashed)
      index        8-byte big-endian end offset of each entry in ``entries``
      hashes       every node of every perfect subtree, 32 bytes each, in post-order
      checkpoint   latest signed checkpoint (C2SP signed note) + cosignature lines
      cosigned/N   the checkpoint of size N with every witness cosignature it got
                   (the latest KEEP_COSIGNED sizes are kept; see TransparencyLog.keep_cosignature)
      witnesses.json  the log's witness policy: its current witnesses, their state, the
                   quorum (written by the service that pushes its checkpoints;
                   dataspace.audit.witnesspolicy)
      lock         fcntl.flock target: one appender at a time across processes

``hashes`` is a Merkle Mountain Range laid out in post-order: leaf i is written,
then every perfect subtree that leaf completes, so the file only ever grows and
node (level L, index k) -- the hash of leaves [k*2^L, (k+1)*2^L) -- sits at the
fixed position ``2m - popcount(m) + L`` with ``m = (k+1)*2^L - 1``. Any subtree
hash the RFC 9162 proofs need is then O(log n) ``pread`` calls, never a
recomputation of the tree.

Write order of an append (the commit protocol): ``entries`` then ``hashes``,
each fsync'd, then ``index``, fsync'd. The index is the commit record: the log's
size is ``len(index) // 8``; bytes past what the index covers in the other two
files are a torn tail that no append acknowledged, and opening the log
truncates them. The checkpoint is replaced atomically (temp file, fsync,
rename, directory fsync) only after the entries it covers are durable, so after
a kill -9 at any moment the leaves, the tree and the latest checkpoint agree.
Each ``cosigned/N`` file is replaced the same way, so a crash keeps either the
cosignatures it had or the ones just added, never a torn note.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from dataspace.errors import DataspaceError

FORMAT = "dataspace-tlog/1"
META = "log.json"
ENTRIES = "entries"
INDEX = "index"
HASHES = "hashes"
CHECKPOINT = "checkpoint"
COSIGNED = "cosigned"
WITNESSES = "witnesses.json"
LOCK = "lock"
#: cosigned checkpoints kept (older sizes are pruned: the latest ones carry the news)
KEEP_COSIGNED = 64

HASH = 32
OFFSET = 8


class LogError(DataspaceError):
    """A log folder that cannot be created, opened, read or appended to."""


class LogCorruptError(LogError):
    """Stored files that disagree with each other or with the entries (truncated, altered)."""


def stored_nodes(n: int) -> int:
    """How many hashes the post-order file holds for a tree of n leaves: 2n - popcount(n)."""
    return 2 * n - n.bit_count()


def node_position(level: int, k: int) -> int:
    """Post-order position of the perfect subtree (level, k) in ``hashes``."""
    m = ((k + 1) << level) - 1  # its last leaf
    return 2 * m - m.bit_count() + level


def peaks_of(n: int) -> list[tuple[int, int]]:
    """The perfect subtrees (level, k) on the right edge of a tree of n leaves, largest first."""
    out, start = [], 0
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            out.append((level, start >> level))
            start += 1 << level
    return out


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, directory fsync."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Files:
    """Open file descriptors of the three append-only files, and positional I/O on them."""

    def __init__(self, directory: Path, writable: bool) -> None:
        self.directory = directory
        flags = os.O_RDWR if writable else os.O_RDONLY
        self.writable = writable
        try:
            self.entries = os.open(directory / ENTRIES, flags)
            self.index = os.open(directory / INDEX, flags)
            self.hashes = os.open(directory / HASHES, flags)
        except FileNotFoundError as e:
            raise LogCorruptError(f"{directory}: missing log file {e.filename}") from e

    def close(self) -> None:
        for fd in (self.entries, self.index, self.hashes):
            with contextlib.suppress(OSError):
                os.close(fd)

    @staticmethod
    def length(fd: int) -> int:
        return os.fstat(fd).st_size

    def committed_size(self) -> int:
        """The log's size: whole records in the index (the commit record)."""
        return self.length(self.index) // OFFSET

    def end_offset(self, n: int) -> int:
        """Where entry n-1 ends in ``entries`` (0 for n == 0)."""
        if n == 0:
            return 0
        raw = os.pread(self.index, OFFSET, (n - 1) * OFFSET)
        if len(raw) != OFFSET:
            raise LogCorruptError(f"{self.directory / INDEX}: record {n - 1} is missing")
        return struct.unpack(">Q", raw)[0]

    def offsets(self, start: int, end: int) -> list[int]:
        """[offset of entry start, end offset of entries start..end-1]."""
        first = 0
        if start > 0:
            raw = os.pread(self.index, OFFSET * (end - start + 1), (start - 1) * OFFSET)
        else:
            raw = b"\0" * OFFSET + os.pread(self.index, OFFSET * (end - start), 0)
        if len(raw) != OFFSET * (end - start + 1):
            raise LogCorruptError(f"{self.directory / INDEX}: records {start}..{end - 1} missing")
        offs = list(struct.unpack(f">{end - start + 1}Q", raw))
        if start == 0:
            offs[0] = first
        return offs

    def read_entries(self, start: int, end: int) -> list[bytes]:
        if end <= start:
            return []
        offs = self.offsets(start, end)
        blob = os.pread(self.entries, offs[-1] - offs[0], offs[0])
        if len(blob) != offs[-1] - offs[0]:
            raise LogCorruptError(
                f"{self.directory / ENTRIES}: truncated, entries {start}..{end - 1} need bytes "
                f"{offs[0]}..{offs[-1]} but the file has {self.length(self.entries)}"
            )
        base = offs[0]
        return [blob[a - base : b - base] for a, b in itertools.pairwise(offs)]

    def iter_entries(self, start: int, end: int, chunk: int = 4096) -> Iterator[bytes]:
        for a in range(start, end, chunk):
            yield from self.read_entries(a, min(end, a + chunk))

    def node(self, level: int, k: int) -> bytes:
        pos = node_position(level, k)
        h = os.pread(self.hashes, HASH, pos * HASH)
        if len(h) != HASH:
            raise LogCorruptError(f"{self.directory / HASHES}: node ({level}, {k}) is missing")
        return h

    def read_hashes(self, first: int, count: int) -> bytes:
        return os.pread(self.hashes, count * HASH, first * HASH)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive fcntl.flock on LOG/lock for the duration (appends, checkpoints, recovery)."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
