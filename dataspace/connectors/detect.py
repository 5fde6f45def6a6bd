"""``--format auto``: tell which reader a path needs, and build that reader.

Rules, in order: a folder with a ``meta/`` folder is LeRobot; otherwise the
path (a file, or a folder's files) is classified by magic bytes, falling back
to the extension: HDF5 (``\\x89HDF``, .h5/.hdf5), MCAP (``\\x89MCAP``, .mcap),
Parquet (``PAR1``, .parquet) or CSV (.csv) -- the last two both read by the
``parquet`` (flat table) reader. Anything else, or a folder mixing kinds, is an
:class:`UnknownFormatError`.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from dataspace.connectors.reader import EnrollError, Reader, UnknownFormatError
from dataspace.schema import Episode

#: format name -> module with ``OPTIONS`` and ``open_reader(path, **options)``
FORMATS = {
    "lerobot": "dataspace.connectors.lerobot",
    "hdf5": "dataspace.connectors.hdf5",
    "mcap": "dataspace.connectors.mcap",
    "parquet": "dataspace.connectors.tabular",
}
ALIASES = {"csv": "parquet", "tabular": "parquet", "h5": "hdf5"}

_MAGIC = ((b"\x89HDF\r\n\x1a\n", "hdf5"), (b"\x89MCAP", "mcap"), (b"PAR1", "parquet"))
_EXT = {".h5": "hdf5", ".hdf5": "hdf5", ".mcap": "mcap", ".parquet": "parquet", ".csv": "parquet"}


def file_kind(path: Path) -> str | None:
    """The format of one file, from its first bytes, else its extension."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return _EXT.get(path.suffix.lower())


def detect(path: Path) -> str:
    """The format name of ``path`` (see module docstring)."""
    if path.is_dir():
        if (path / "meta").is_dir():  # LeRobot, even with info.json missing (reported then)
            return "lerobot"
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        kinds = {k for k in map(file_kind, files) if k is not None}
        if len(kinds) == 1:
            return kinds.pop()
        if not kinds:
            raise UnknownFormatError(
                "no LeRobot meta/info.json and no HDF5, MCAP, Parquet or CSV files", path
            )
        raise UnknownFormatError(f"folder mixes formats {sorted(kinds)}; enroll each apart", path)
    if path.is_file():
        kind = file_kind(path)
        if kind is None:
            raise UnknownFormatError("not a LeRobot folder, HDF5, MCAP, Parquet or CSV file", path)
        return kind
    raise EnrollError("does not exist", path)


def open_reader(path: Path, format: str = "auto", **options: Any) -> Reader:
    """Build the reader for ``path``; options that the format does not take are an error."""
    fmt = detect(path) if format == "auto" else ALIASES.get(format, format)
    if fmt not in FORMATS:
        raise UnknownFormatError(
            f"unknown format {format!r} (expected auto, {', '.join(FORMATS)})", path
        )
    module = import_module(FORMATS[fmt])
    given = {k: v for k, v in options.items() if v is not None}
    wrong = sorted(set(given) - set(module.OPTIONS))
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise EnrollError(f"{flags} does not apply to the {fmt} format", path)
    return module.open_reader(path, **given)


def read_episodes(path: Path | str) -> list[Episode]:
    """Every episode at ``path`` (a folder or file in any enrollable format), in memory.

    For a consumer's own data (``--validation``, ``--public-stats``), never a site's.
    """
    return list(open_reader(Path(path)).episodes())
