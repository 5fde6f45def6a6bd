"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles): a log as tiles, over HTTP or as static files.

A log folder is already the tlog-tiles data model in another packing: its post-order
``hashes`` file holds every full tile's hashes, ``entries`` the entry bundles,
``checkpoint`` the tiles ``checkpoint`` file (:mod:`.storage`). The services serve the
tiles from it (``dataspace.auth.log_api``: ``<prefix>/tile/<L>/<N>[.p/<W>]`` and
``<prefix>/tile/entries/<N>[.p/<W>]``); :func:`export_tiles` writes the same bytes as
static files for an object store or CDN, as Trillian Tessera and Sunlight do: reads
then never touch the appender. Writes stay with one sequencer per log (one fsync'd
batch), and more logs (one per site already, sharded by time for the hub) scale writes
out; witnesses keep each shard honest.

Entries: tlog-tiles "Log entries" prefixes each entry of a bundle with its length as a
big-endian uint16, so an entry of 64 KiB or more has no encoding there. The log allows
entries up to 1 MiB (:data:`dataspace.audit.log.MAX_ENTRY`); a bundle holding such an
entry is refused with :class:`TileEntryTooLargeError` (never written short: a bundle
missing an entry would not hash to its level-0 tile). Its entries stay readable in the
log's own format (``GET <prefix>/entries``; the spec: "Logs MAY serve entries in
different formats ... at a different URL").
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.storage import LogError

#: tlog-tiles "Merkle Tree": hashes (or entries) in a full tile
TILE_WIDTH = 256
#: tlog-tiles: a tile at level L holds the tree's nodes at level 8L
LEVELS_PER_TILE = 8
#: tlog-tiles: "<L> ... MUST be a decimal ASCII integer between 0 and 63"
MAX_LEVEL = 63
#: tlog-tiles "Log entries": each is prefixed with its length as a big-endian uint16
MAX_TILE_ENTRY = 65535
#: longest N accepted in a path: 7 groups of 3 digits (10**21 > 2**64 leaves)
MAX_INDEX_GROUPS = 7
#: tlog-tiles: tile and entry bundle contents, and the checkpoint's
TILE_CONTENT_TYPE = "application/octet-stream"
CHECKPOINT_CONTENT_TYPE = "text/plain; charset=utf-8"


class TileError(LogError):
    """A tile that cannot be served."""


class TilePathError(TileError):
    """A tile path that is not in tlog-tiles' encoding (or not its one canonical form)."""

    http_status = 400


class TileNotFoundError(TileError):
    """A tile beyond the log's checkpoint (tlog-tiles: "Empty tiles MUST NOT be served")."""

    http_status = 404


class TileEntryTooLargeError(TileError):
    """An entry bundle holding an entry that a uint16 length prefix cannot say (>= 64 KiB).

    ``index`` is the entry's index in the log, ``length`` its size in bytes. The service
    answers 422: the bundle exists but has no tlog-tiles encoding."""

    http_status = 422

    def __init__(self, index: int, length: int) -> None:
        super().__init__(
            f"entry {index} is {length} bytes; a tlog-tiles entry bundle prefixes each "
            f"entry with a uint16 length (at most {MAX_TILE_ENTRY}): read it from the "
            "log's entries instead"
        )
        self.index = index
        self.length = length


class TiledLog(Protocol):
    """What tiles read of a log (:class:`~dataspace.audit.log.TransparencyLog`)."""

    def checkpoint(self) -> bytes: ...
    def node(self, level: int, k: int) -> bytes: ...
    def entries(self, start: int = 0, end: int | None = None) -> list[bytes]: ...


@dataclass(frozen=True)
class TileRef:
    """One tlog-tiles resource: level ``level`` (None: an entry bundle), index ``index``,
    ``width`` hashes or entries (256 for a full tile, 1..255 for a ``.p/W`` one)."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    @property
    def partial(self) -> bool:
        return self.width != TILE_WIDTH

    def path(self) -> str:
        """Its path under the log's prefix: ``tile/L/N[.p/W]`` or ``tile/entries/N[.p/W]``."""
        head = "entries" if self.level is None else str(self.level)
        return f"tile/{head}/" + tile_path(self.index, self.width if self.partial else None)


def tile_path(n: int, partial: int | None = None) -> str:
    """tlog-tiles "Merkle Tree": tile index N in zero-padded 3-digit path elements, all
    but the last prefixed with ``x`` (``x001/x234/067``); a partial tile of W ends in ``.p/W``."""
    if n < 0:
        raise TilePathError(f"tile index {n} is negative")
    digits = f"{n:03d}"
    while len(digits) % 3:
        digits = "0" + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    p = "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])
    return p + (f".p/{partial}" if partial else "")


# L: "between 0 and 63, with no additional leading zeroes"; W: "between 1 and 255, with
# no additional leading zeroes"; N: x-prefixed 3-digit groups, then a 3-digit group
_LEVEL = r"(?P<level>0|[1-9][0-9]?|entries)"
_INDEX = rf"(?P<index>(?:x[0-9]{{3}}/){{0,{MAX_INDEX_GROUPS - 1}}}[0-9]{{3}})"
_WIDTH = r"(?:\.p/(?P<width>[1-9][0-9]{0,2}))?"
TILE_PATH_RE = re.compile(f"tile/{_LEVEL}/{_INDEX}{_WIDTH}")


def parse_tile_path(path: str) -> TileRef:
    """A ``tile/...`` path (relative to the log's prefix) as a :class:`TileRef`.

    Strict, so that each resource has one URL (a cache holds one copy): L 0..63 and W
    1..255 without leading zeros; N with exactly 3 digits per element, ``x`` on all but
    the last, and no leading ``x000`` element (:func:`tile_path`'s form). Anything else,
    ``..`` included, raises :class:`TilePathError`.
    """
    m = TILE_PATH_RE.fullmatch(path)
    if m is None:
        raise TilePathError(f"{path[:120]!r} is not a tlog-tiles path tile/L/N[.p/W]")
    level = None if m["level"] == "entries" else int(m["level"])
    if level is not None and level > MAX_LEVEL:
        raise TilePathError(f"tile level {level} is over {MAX_LEVEL}")
    index = int(m["index"].replace("x", "").replace("/", ""))
    width = int(m["width"]) if m["width"] else TILE_WIDTH
    if m["width"] and width >= TILE_WIDTH:
        raise TilePathError(f"partial tile width {width} is not between 1 and 255")
    if tile_path(index) != m["index"]:
        raise TilePathError(f"tile index {m['index']!r} is not in its canonical form")
    return TileRef(level, index, width)


def tile_count(size: int, level: int) -> int:
    """How many hashes level ``level`` of the tiles of a tree of ``size`` leaves holds:
    the nodes at tree level 8L, ``floor(size / 256**level)``."""
    return size >> (LEVELS_PER_TILE * level)


def check_exists(ref: TileRef, size: int) -> None:
    """tlog-tiles: raise :class:`TileNotFoundError` unless ``ref`` is a tile of the tree of
    ``size`` leaves: a full tile it holds all 256 hashes of, or a partial one of width W
    that some tree up to ``size`` had (its hashes never change once the tree grew past)."""
    count = tile_count(size, 0 if ref.level is None else ref.level)
    end = ref.index * TILE_WIDTH + ref.width
    if end > count:
        what = "entry bundle" if ref.level is None else f"level {ref.level} tile"
        raise TileNotFoundError(
            f"{what} {ref.index} of width {ref.width} is beyond the tree of size {size}"
        )


def read_tile(log: TiledLog, ref: TileRef, size: int) -> bytes:
    """tlog-tiles "Merkle Tree": tile ``ref`` of the tree of ``size`` leaves, the
    concatenated hashes MTH(D[(n*256+i)*256**l : (n*256+i+1)*256**l]) for i < W, read from
    the stored nodes at tree level 8L. Entry bundles: :func:`read_entry_bundle`."""
    if ref.level is None:
        return read_entry_bundle(log, ref, size)
    check_exists(ref, size)
    tree_level = LEVELS_PER_TILE * ref.level
    first = ref.index * TILE_WIDTH
    return b"".join(log.node(tree_level, first + i) for i in range(ref.width))


def read_entry_bundle(log: TiledLog, ref: TileRef, size: int) -> bytes:
    """tlog-tiles "Log entries": the entries of bundle ``ref``, each prefixed with its
    big-endian uint16 length. Raises :class:`TileEntryTooLargeError` for an entry that has
    no such prefix (the whole bundle is refused: none is ever left out)."""
    check_exists(ref, size)
    first = ref.index * TILE_WIDTH
    es = log.entries(first, first + ref.width)
    for i, e in enumerate(es):
        if len(e) > MAX_TILE_ENTRY:
            raise TileEntryTooLargeError(first + i, len(e))
    return b"".join(struct.pack(">H", len(e)) + e for e in es)


def tiles_of(size: int) -> Iterator[TileRef]:
    """Every tile of the tree of ``size`` leaves, as its latest checkpoint shows it:
    full tiles and the rightmost partial one per level, then the entry bundles."""
    level = 0
    while (count := tile_count(size, level)) > 0:
        for t in range((count + TILE_WIDTH - 1) // TILE_WIDTH):
            yield TileRef(level, t, min(TILE_WIDTH, count - t * TILE_WIDTH))
        level += 1
    for t in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        yield TileRef(None, t, min(TILE_WIDTH, size - t * TILE_WIDTH))


def export_tiles(log: TiledLog, out: Path | str) -> int:
    """Write ``log`` at its latest checkpoint as tlog-tiles static files under ``out``;
    returns the number of files written.

    Only full tiles are hashed upward; partial tiles are written as ``.p/W``. An entry
    of 64 KiB or more raises :class:`TileEntryTooLargeError` before any file is written
    (its bundle has no encoding; nothing is dropped).
    """
    out = Path(out)
    note = log.checkpoint()
    size = checkpoint_of_note(note).size
    refs = list(tiles_of(size))
    bundles = [r for r in refs if r.level is None]
    for r in bundles:  # refuse before writing: a half export is not left behind
        first = r.index * TILE_WIDTH
        for i, e in enumerate(log.entries(first, first + r.width)):
            if len(e) > MAX_TILE_ENTRY:
                raise TileEntryTooLargeError(first + i, len(e))
    for r in refs:
        _write(out / r.path(), read_tile(log, r, size))
    (out / "checkpoint").write_bytes(note)
    return len(refs) + 1


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
