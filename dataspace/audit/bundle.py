"""A portable audit bundle: everything an auditor needs, offline, in one folder.

::

    BUNDLE/
      entries.jsonl   entry i on line i (the exact bytes that were hashed, then "\\n")
      checkpoint      the log's signed checkpoint (C2SP signed note, log signature only)
      cosignatures    witness cosignature lines over that checkpoint (C2SP
                      tlog-cosignature), one ``— NAME BASE64`` line each; may be empty

``entries.jsonl`` holds exactly the checkpoint's tree size entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dataspace.audit.checkpoint import parse_checkpoint
from dataspace.audit.note import Note, parse_note
from dataspace.audit.storage import LogError, atomic_write

ENTRIES = "entries.jsonl"
CHECKPOINT = "checkpoint"
COSIGNATURES = "cosignatures"


class BundleError(LogError):
    """A bundle folder that is missing files or malformed."""


def split_cosignatures(note: bytes, origin: str) -> tuple[bytes, bytes]:
    """(the note with only signatures named ``origin``, the other signature lines)."""
    parsed = parse_note(note)
    own = [s for s in parsed.signatures if s.name == origin]
    rest = [s for s in parsed.signatures if s.name != origin]
    if not own:
        raise BundleError(f"checkpoint has no signature named after its origin {origin!r}")
    return Note(parsed.text, tuple(own)).to_bytes(), b"".join(s.line() for s in rest)


def write_bundle(out: Path | str, note: bytes, entries: Iterator[bytes]) -> int:
    """Write a bundle from a signed checkpoint (with any cosignatures) and its entries.

    Writes ``entries.jsonl`` first and the checkpoint last, each atomically, so a
    half-written bundle has no checkpoint and does not verify.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cp = parse_checkpoint(parse_note(note).text)
    signed, cosigs = split_cosignatures(note, cp.origin)
    tmp = out / (ENTRIES + ".tmp")
    count = 0
    with open(tmp, "wb") as f:
        for e in entries:
            if count >= cp.size:
                break
            if b"\n" in e:
                raise BundleError(f"entry {count} contains a newline")
            f.write(e + b"\n")
            count += 1
    if count != cp.size:
        tmp.unlink()
        raise BundleError(f"checkpoint covers {cp.size} entries but only {count} were given")
    tmp.replace(out / ENTRIES)
    atomic_write(out / COSIGNATURES, cosigs)
    atomic_write(out / CHECKPOINT, signed)
    return count


@dataclass(frozen=True)
class Bundle:
    directory: Path

    @classmethod
    def open(cls, directory: Path | str) -> Bundle:
        d = Path(directory)
        for name in (ENTRIES, CHECKPOINT):
            if not (d / name).is_file():
                raise BundleError(f"{d} is not an audit bundle: {name} is missing")
        return cls(d)

    def checkpoint(self) -> bytes:
        return (self.directory / CHECKPOINT).read_bytes()

    def cosignatures(self) -> bytes:
        p = self.directory / COSIGNATURES
        return p.read_bytes() if p.is_file() else b""

    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream the entries [start, end) (each line without its newline)."""
        with open(self.directory / ENTRIES, "rb") as f:
            for i, line in enumerate(f):
                if end is not None and i >= end:
                    break
                if i < start:
                    continue
                if not line.endswith(b"\n"):
                    raise BundleError(f"{ENTRIES}: line {i} is truncated (no newline)")
                yield line[:-1]
