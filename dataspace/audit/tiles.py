"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles): a log as static files.

A log folder is already the tlog-tiles data model in another packing: its post-order
``hashes`` file holds every full tile's hashes, ``entries`` the entry bundles,
``checkpoint`` the tiles ``checkpoint`` file (:mod:`.storage`). Publishing the log for
any number of readers is a static export of ``tile/L/N`` (256 hashes per full tile),
``tile/entries/N`` (uint16 big-endian length-prefixed entries) and ``checkpoint`` to an
object store or CDN, as Trillian Tessera and Sunlight do: reads then never touch the
appender. Writes stay with one sequencer per log (one fsync'd batch), and more logs
(one per site already, sharded by time for the hub) scale writes out; witnesses keep
each shard honest.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Protocol

from dataspace.audit.checkpoint import checkpoint_of_note

#: tlog-tiles: hashes (or entries) in a full tile
TILE_WIDTH = 256
#: tlog-tiles: a tile at level L holds the tree's nodes at level 8L
LEVELS_PER_TILE = 8
#: tlog-tiles "Log entries": each is prefixed with its length as a big-endian uint16
MAX_TILE_ENTRY = 65535


class TiledLog(Protocol):
    """What an export reads of a log (:class:`~dataspace.audit.log.TransparencyLog`)."""

    def checkpoint(self) -> bytes: ...
    def node(self, level: int, k: int) -> bytes: ...
    def entries(self, start: int = 0, end: int | None = None) -> list[bytes]: ...


def tile_path(n: int, partial: int | None = None) -> str:
    """tlog-tiles: tile index N in 3-digit path elements, all but the last prefixed with
    ``x`` (``x001/x234/067``); a partial tile of W entries ends in ``.p/W``."""
    digits = f"{n:03d}"
    while len(digits) % 3:
        digits = "0" + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    p = "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])
    return p + (f".p/{partial}" if partial else "")


def export_tiles(log: TiledLog, out: Path | str) -> int:
    """Write ``log`` at its latest checkpoint as tlog-tiles static files under ``out``;
    returns the number of files written.

    Only full tiles are hashed upward; partial tiles are written as ``.p/W``. Entries
    longer than a uint16 can say are left out of their entry bundle.
    """
    out = Path(out)
    note = log.checkpoint()
    size = checkpoint_of_note(note).size
    written = 0
    level = 0
    while True:
        # tile level L covers tree levels 8L .. 8L+7; its hashes are nodes at level 8L
        tree_level = LEVELS_PER_TILE * level
        count = size >> tree_level
        if count == 0:
            break
        for t in range(0, (count + TILE_WIDTH - 1) // TILE_WIDTH):
            w = min(TILE_WIDTH, count - t * TILE_WIDTH)
            data = b"".join(log.node(tree_level, t * TILE_WIDTH + i) for i in range(w))
            _write(out / "tile" / str(level) / tile_path(t, _partial(w)), data)
            written += 1
        level += 1
    for t in range(0, (size + TILE_WIDTH - 1) // TILE_WIDTH):
        w = min(TILE_WIDTH, size - t * TILE_WIDTH)
        es = log.entries(t * TILE_WIDTH, t * TILE_WIDTH + w)
        data = b"".join(struct.pack(">H", len(e)) + e for e in es if len(e) <= MAX_TILE_ENTRY)
        _write(out / "tile" / "entries" / tile_path(t, _partial(w)), data)
        written += 1
    (out / "checkpoint").write_bytes(note)
    return written + 1


def _partial(width: int) -> int | None:
    return None if width == TILE_WIDTH else width


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
