"""A log's cosigned checkpoints, and which of them counts as witnessed.

C2SP tlog-cosignature v1.0.1: a witness's cosignature signs a checkpoint *body*, so it
stays valid after the log grows. A log keeps each checkpoint that witnesses cosigned
as ``LOG/cosigned/N`` (N: its size; :class:`KeptCheckpoints`): a note with the log's
own signature and every cosignature line that checkpoint got, the newest
``KEEP_COSIGNED`` sizes kept. Which checkpoint is the log's *witnessed* one is the
witness policy's call (:mod:`.witnesspolicy`; :func:`witnessed`), and
:func:`witnessing_status` says who witnesses the log, how far, and who is stale.

:class:`~dataspace.audit.log.TransparencyLog` takes its lock and calls these: the
functions here are pure (notes in, a note or a status out); only
:class:`KeptCheckpoints` touches files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.note import Note, Signature, Verifier, parse_note
from dataspace.audit.storage import (
    COSIGNED,
    KEEP_COSIGNED,
    LogCorruptError,
    atomic_write,
    fsync_dir,
)
from dataspace.audit.witnesspolicy import WitnessPolicy, WitnessState


def witness_names(note: bytes, origin: str) -> set[str]:
    """Who cosigned ``note``: the names of its signature lines, but the log's (``origin``)."""
    return {s.name for s in parse_note(note).signatures} - {origin}


def log_signed_part(note: bytes, log: Verifier) -> bytes:
    """The note with only the log's own signature lines (its cosignatures dropped)."""
    parsed = parse_note(note)
    own = [s for s in parsed.signatures if (s.name, s.key_id) == (log.name, log.key_id)]
    if not own:
        raise LogCorruptError(f"checkpoint carries no signature of the log key {log.name}")
    return parsed.text + b"\n" + b"".join(s.line() for s in own)


def log_signature(body: bytes, notes: Iterable[Note], log: Verifier) -> Signature | None:
    """The first signature by the log's key of ``body`` in ``notes`` that verifies."""
    for note in notes:
        if note.text != body:
            continue
        for s in note.signatures:
            if (s.name, s.key_id) == (log.name, log.key_id) and log.verify(body, s.sig):
                return s
    return None


def merge_cosignature(body: bytes, notes: Iterable[Note], own: Signature, sig: Signature) -> bytes:
    """The note of ``body``: the log's signature ``own``, every other signature of ``body``
    in ``notes``, and the cosignature ``sig``, which replaces an earlier line of the same
    witness (name and key ID: tlog-cosignature, a newer cosignature of a witness wins)."""
    merged = {(own.name, own.key_id): own}
    for note in notes:
        if note.text == body:
            for s in note.signatures:
                merged.setdefault((s.name, s.key_id), s)
    merged[(sig.name, sig.key_id)] = sig
    return Note(body, tuple(merged.values())).to_bytes()


def last_cosigned(notes: Iterable[bytes], origin: str) -> dict[str, int]:
    """Witness name -> the largest size among ``notes`` (checkpoints of ``origin``) it cosigned."""
    out: dict[str, int] = {}
    for note in notes:
        size = checkpoint_of_note(note).size
        for name in witness_names(note, origin):
            out[name] = max(out.get(name, 0), size)
    return out


def witnessed(
    latest: bytes,
    kept: Sequence[bytes],
    origin: str,
    policy: WitnessPolicy | None,
    now: float,
) -> bytes:
    """The witnessed checkpoint of a log, among its ``latest`` and its ``kept`` cosigned
    checkpoints (smallest first).

    With a witness policy (:mod:`.witnesspolicy`): the newest one that satisfies it at
    ``now``, so a witness that is gone for good stops holding it back once stale, and a
    witness removed from the configuration at once; when none satisfies it, the newest
    one cosigned by any current witness; ``latest`` when the policy names no witness.

    Without a policy (a log nobody pushes as a service): "fully" cosigned, by every
    witness that cosigned any of them. ``latest`` when it is fully cosigned or nothing
    is kept; when none is fully cosigned, the one with the most witnesses (then the
    largest).
    """
    cands = [latest, *reversed(kept)]
    names = [witness_names(n, origin) for n in cands]
    if policy is not None and not policy.witnesses:
        return latest  # every witness was removed: nothing to wait for
    if policy is not None:
        sizes = [checkpoint_of_note(n).size for n in cands]
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
    best = max(range(len(cands)), key=lambda i: (len(names[i]), checkpoint_of_note(cands[i]).size))
    return cands[best]


def witnessing_status(
    origin: str,
    latest: bytes | None,
    kept: Sequence[bytes],
    policy: WitnessPolicy | None,
    now: float,
) -> dict[str, Any]:
    """Who witnesses a log, how far, and which witness is stale since which size.

    ``latest`` (None: the log has none, then ``kept`` is not empty) and ``kept`` as for
    :func:`witnessed`. ``witnesses`` lists the current witnesses (from the policy;
    without one, every witness of a kept checkpoint), each with the largest size it
    cosigned, whether it cosigned the witnessed checkpoint, whether it is stale
    (failing for ``stale_after_s`` s: it no longer holds the witnessed checkpoint back),
    since when it fails and why.
    """
    note = witnessed(latest if latest is not None else kept[-1], kept, origin, policy, now)
    cosigners = witness_names(note, origin)
    seen = last_cosigned([*kept, *([latest] if latest else [])], origin)
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
        "origin": origin,
        "size": checkpoint_of_note(latest).size if latest else 0,
        "witnessed_size": checkpoint_of_note(note).size,
        "witnesses": rows,
        "stale": [r["witness"] for r in rows if r["stale"]],
        "quorum": policy.quorum if policy is not None else None,
        "stale_after_s": stale_after,
        "policy": policy is not None,
    }


class KeptCheckpoints:
    """``LOG/cosigned/N``: the checkpoint of size N with every cosignature it got, each
    file replaced atomically (a crash keeps the cosignatures it had or the new ones)."""

    def __init__(self, log_directory: Path) -> None:
        self.log_directory = log_directory
        self.directory = log_directory / COSIGNED

    def sizes(self) -> list[int]:
        """The sizes kept, smallest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def read(self, size: int) -> bytes | None:
        try:
            return (self.directory / str(size)).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, size: int, note: bytes) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(exist_ok=True)
            fsync_dir(self.log_directory)
        atomic_write(self.directory / str(size), note)

    def prune(self) -> None:
        """Keep the newest ``KEEP_COSIGNED`` sizes (the latest ones carry the news)."""
        for old in self.sizes()[:-KEEP_COSIGNED]:
            (self.directory / str(old)).unlink(missing_ok=True)
