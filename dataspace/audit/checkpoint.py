"""C2SP tlog-checkpoint v1 (https://c2sp.org/tlog-checkpoint): the signed tree head.

The body is: the origin line, the tree size in decimal (no leading zeros), the
root hash in standard base64, then zero or more extension lines, each ending in
a newline. It is signed as a C2SP signed note whose key name should equal the
origin (:mod:`dataspace.audit.note`).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from dataspace.audit.merkle import HASH_SIZE
from dataspace.audit.note import NoteError, Signer, Verifier, open_note, parse_note, sign_note


class CheckpointError(NoteError):
    """A checkpoint body that does not follow tlog-checkpoint."""


_SIZE = re.compile(rb"(0|[1-9][0-9]{0,19})")


@dataclass(frozen=True)
class Checkpoint:
    """tlog-checkpoint "Note text": origin, size, root hash, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def body(self) -> bytes:
        """The byte-exact note text."""
        return format_checkpoint(self)


def check_origin(origin: str) -> str:
    """tlog-checkpoint: the origin is a schemaless URL; no spaces, no '+', non-empty."""
    if not origin or any(c.isspace() or c == "+" for c in origin):
        raise CheckpointError(f"invalid checkpoint origin {origin!r}")
    return origin


def format_checkpoint(cp: Checkpoint) -> bytes:
    check_origin(cp.origin)
    if cp.size < 0 or len(cp.root) != HASH_SIZE:
        raise CheckpointError(f"invalid checkpoint size {cp.size} or root length {len(cp.root)}")
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root).decode(), *cp.extensions]
    for ext in cp.extensions:
        if not ext or "\n" in ext:
            raise CheckpointError(f"invalid checkpoint extension line {ext!r}")
    return ("\n".join(lines) + "\n").encode()


def parse_checkpoint(body: bytes) -> Checkpoint:
    """Parse a checkpoint body (the note text), rejecting anything not byte-exact."""
    if not body.endswith(b"\n"):
        raise CheckpointError("checkpoint body must end in a newline")
    lines = body[:-1].split(b"\n")
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint has {len(lines)} lines; needs origin, size and root")
    try:
        origin = check_origin(lines[0].decode("utf-8"))
        exts = tuple(ln.decode("utf-8") for ln in lines[3:])
    except UnicodeDecodeError as e:
        raise CheckpointError(f"checkpoint is not UTF-8: {e}") from e
    if not _SIZE.fullmatch(lines[1]):
        raise CheckpointError(
            f"checkpoint size {lines[1][:40]!r} is not a decimal without leading zeros"
        )
    try:
        root = base64.b64decode(lines[2], validate=True)
    except binascii.Error as e:
        raise CheckpointError(f"checkpoint root {lines[2][:60]!r} is not base64: {e}") from e
    if len(root) != HASH_SIZE or base64.b64encode(root) != lines[2]:
        raise CheckpointError(f"checkpoint root {lines[2][:60]!r} is not a 32-byte hash")
    if any(not e for e in exts):
        raise CheckpointError("checkpoint has an empty extension line")
    return Checkpoint(origin, int(lines[1]), root, exts)


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> bytes:
    """The signed note of a checkpoint."""
    return sign_note(cp.body(), [signer])


def open_checkpoint(note: bytes, log_key: Verifier) -> Checkpoint:
    """Verify a signed checkpoint against the log's key and parse its body.

    tlog-checkpoint: the key name should be the origin, so a checkpoint whose
    origin differs from the trusted key's name is rejected too.
    """
    opened, _ = open_note(note, [log_key])
    cp = parse_checkpoint(opened.text)
    if cp.origin != log_key.name:
        raise CheckpointError(
            f"checkpoint origin {cp.origin!r} is not the log key's {log_key.name!r}"
        )
    return cp


def checkpoint_of_note(note: bytes) -> Checkpoint:
    """Parse the body of a signed checkpoint without verifying it (for display and routing)."""
    return parse_checkpoint(parse_note(note).text)
