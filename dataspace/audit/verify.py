"""The auditor: check a log with nothing but public keys.

:func:`verify_source` is the front door: it does everything ``dataspace audit verify``
does to a site folder, a log folder, a bundle or a URL (the CLI, the demo and the hub's
dashboard all call it). It reads the source's checkpoint (its witnessed one), streams
its entries once through :func:`audit`, and adds what the source says of its witnesses.

:func:`audit` checks, in this order:

1. the checkpoint is signed by a trusted log key named after its origin
   (rule ``checkpoint-signature``; ``checkpoint-malformed``);
2. every entry is a canonical, well-formed event (``entry-malformed``) signed by
   the key its actor names (``entry-signature``), and that actor is trusted when
   the trusted-keys file lists actors (``actor-untrusted``);
3. the business rules, over the events in log order (:mod:`dataspace.audit.rules`:
   contracts, budgets, the mechanism's charges, rounds, privacy units);
4. the Merkle tree of the entries has the checkpoint's size and root
   (``tree-size``, ``tree-root``);
5. at least ``quorum`` distinct trusted witnesses cosigned the checkpoint
   (``witness-signature``, ``witness-quorum``);
6. the checkpoint the auditor kept from last time is signed by the same log and
   is a prefix of this tree (``previous-checkpoint``, ``rollback``, ``fork``);
7. the log is anchored (``unanchored``): a trusted witness cosigned the checkpoint,
   or the kept checkpoint (of a non-empty tree) is the log's. Otherwise only the log's
   self-consistency was checked, which a site hostile to its auditors fakes by
   rebuilding its log without some rounds and signing it again (DESIGN.md, "Threat
   model"). ``allow_unanchored=True`` (``dataspace audit verify --allow-unanchored``)
   accepts that explicitly; the report still says ``anchored`` false and ``verified``
   (no violation and anchored) false.

The report lists every violation in the order found; the first names the entry
index, the rule and the values at fault. What the source says of its witnesses
(:func:`~dataspace.audit.report.note_witnessing`: its latest size, and which witness
is stale since which size) is reported too, not judged: the quorum judges what was
cosigned.

What is trusted (log, witness and actor keys) is read by :mod:`dataspace.audit.trust`,
which documents the ``--trusted-keys`` file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from dataspace.audit.checkpoint import Checkpoint, checkpoint_of_note, parse_checkpoint
from dataspace.audit.events import (
    EventError,
    EventSignatureError,
    UntrustedActorError,
    check_entry,
)
from dataspace.audit.log import TransparencyLog
from dataspace.audit.merkle import RootAccumulator
from dataspace.audit.note import (
    Note,
    NoteError,
    Verifier,
    parse_note,
    parse_signature_lines,
    verify_signatures,
)
from dataspace.audit.report import AuditReport, Violation, note_witnessing, stale_witness_text
from dataspace.audit.rules import RuleChecker
from dataspace.audit.source import FolderSource, LogSource, RequestSigner, open_source
from dataspace.audit.trust import TrustedKeys, load_trusted_keys

#: wraps the stream of a source's entries, given how many there are (a progress bar)
Progress = Callable[[Iterator[bytes], int], Iterator[bytes]]


def verify_source(
    source: str | os.PathLike[str] | LogSource | TransparencyLog,
    trusted_keys: TrustedKeys | str | os.PathLike[str],
    *,
    previous: bytes | None = None,
    quorum: int = 0,
    allow_unanchored: bool | None = False,
    keep_rounds: bool = True,
    checkpoint: bytes | None = None,
    sign: RequestSigner | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Verify a log source as ``dataspace audit verify`` does (module docstring).

    ``source``: a site folder (its ``SITE/log``), a log folder, an audit bundle, an
    http(s) URL of a served log (requests signed by ``sign``), an opened
    :class:`~dataspace.audit.source.LogSource`, or an open :class:`TransparencyLog`.
    ``trusted_keys``: a trusted-keys file (:mod:`dataspace.audit.trust`) or the
    :class:`TrustedKeys` read from one. ``previous``: the checkpoint note the auditor
    kept from last time. ``quorum``: distinct trusted witnesses that must cosign.
    ``allow_unanchored``: True accepts a log no trusted witness or kept checkpoint
    anchors (``--allow-unanchored``); None accepts it only when the source reports no
    witness at all. ``keep_rounds``: keep a record per round in the report
    (``dataspace audit show``). ``checkpoint``: verify this signed checkpoint of the
    source rather than the one it serves (its witnessed one). ``progress`` wraps the
    stream of entries.

    Every finding is a :class:`~dataspace.audit.report.Violation` in the report; a
    ``witness-quorum`` one names the trusted witnesses that did not cosign (and which of
    them the source reports stale). Raises only when the source or the keys cannot be
    read: :class:`~dataspace.audit.storage.LogError` (a source that is none, or fails;
    :class:`~dataspace.audit.bundle.BundleError` for a bundle),
    :class:`~dataspace.audit.trust.TrustedKeysError`,
    :class:`~dataspace.audit.note.NoteError` (a checkpoint that is not one), or
    :class:`~dataspace.audit.merkle.ProofError` (a served log that answers an error).
    """
    if isinstance(source, str | os.PathLike):
        src = open_source(source, sign=sign)
    elif isinstance(source, TransparencyLog):
        src = FolderSource(source)
    else:
        src = source
    trusted = (
        trusted_keys if isinstance(trusted_keys, TrustedKeys) else load_trusted_keys(trusted_keys)
    )
    note = src.checkpoint() if checkpoint is None else checkpoint
    size = checkpoint_of_note(note).size
    status = None
    if allow_unanchored is None:  # the source's own witness set decides
        status = src.witnessing()
        allow_unanchored = not (status and status.get("witnesses"))
    entries = src.iter_entries(0, size)
    report = audit(
        progress(entries, size) if progress is not None else entries,
        note,
        trusted,
        src.cosignatures(),
        previous=previous,
        quorum=quorum,
        keep_rounds=keep_rounds,
        allow_unanchored=allow_unanchored,
    )
    note_witnessing(report, src.witnessing() if status is None else status)
    _name_missing_witnesses(report, trusted)
    return report


def _name_missing_witnesses(report: AuditReport, trusted: TrustedKeys) -> None:
    """A ``witness-quorum`` violation names the trusted witnesses that did not cosign,
    and which of them the source reports stale (since which size)."""
    missing = sorted({w.name for w in trusted.witnesses} - set(report.witnesses))
    stale = {w["witness"]: w for w in report.stale_witnesses}
    for v in report.violations:
        if v.rule == "witness-quorum":
            v.values["missing"] = missing
            v.values["stale"] = sorted(n for n in missing if n in stale)
            if missing:
                names = [stale_witness_text(stale[n]) if n in stale else n for n in missing]
                v.message += f"; missing: {', '.join(names)}"


def audit(
    entries: Iterable[bytes],
    note: bytes,
    trusted: TrustedKeys,
    cosignatures: bytes = b"",
    previous: bytes | None = None,
    quorum: int = 0,
    max_violations: int = 1000,
    keep_rounds: bool = True,
    allow_unanchored: bool = False,
) -> AuditReport:
    """Check a log from its entries, its signed checkpoint and cosignatures (module docstring).

    The checks of :func:`verify_source` once the source is read: ``note`` is the signed
    checkpoint, ``entries`` its first ``size`` entries, ``cosignatures`` witness
    signature lines besides those in ``note``.

    ``allow_unanchored=True`` accepts a log that neither a trusted witness nor the
    kept ``previous`` checkpoint anchors (no ``unanchored`` violation): the report then
    says ``anchored`` false, ``verified`` false. Only its self-consistency was checked,
    which its owner can always fake by rebuilding and re-signing it.

    ``keep_rounds=False`` checks the same rules but keeps no per-round records in
    the report (``rounds`` stays empty, ``round_count`` counts them): memory then
    grows only by the (run, round, dataset) key, charge and state of each round, which
    the contract-rounds, round.finished, round-repeated and round-evaluated rules need
    (about 200 bytes a round), and by one RDP curve per contract.
    """
    report = AuditReport(quorum=quorum, unanchored_allowed=allow_unanchored)
    vio = report.violations
    # 1. the checkpoint
    try:
        parsed = parse_note(note)
        cp = parse_checkpoint(parsed.text)
    except NoteError as e:
        vio.append(Violation("checkpoint-malformed", str(e)))
        return report
    report.origin, report.size, report.root = cp.origin, cp.size, cp.root.hex()
    logs = [v for v in trusted.logs if v.name == cp.origin]
    try:
        good = verify_signatures(parsed.text, parsed.signatures, logs)
    except NoteError as e:
        good = []
        vio.append(Violation("checkpoint-signature", str(e), values={"origin": cp.origin}))
    if not good and not vio:
        vio.append(
            Violation(
                "checkpoint-signature",
                f"no trusted log key of {cp.origin} signed the checkpoint",
                values={"origin": cp.origin},
            )
        )
    prev_cp = _previous(previous, cp, logs, report)
    # 2-4. the entries, streamed once: per entry, its leaf and the subtrees it completes
    # (on average one node hash), its signature, then the rules
    tree = RootAccumulator()
    add = tree.add
    prev_size = prev_cp.size if prev_cp is not None else -1
    prev_root = tree.root() if prev_size == 0 else None
    rules = RuleChecker(report, keep_rounds)
    feed = rules.feed
    actors = trusted.actor_keys()
    kinds = report.kinds
    for i, entry in enumerate(entries):
        if i >= cp.size:
            vio.append(
                Violation(
                    "tree-size",
                    f"more entries than the checkpoint's {cp.size}",
                    i,
                    {"checkpoint_size": cp.size},
                )
            )
            break
        add(entry)
        if i + 1 == prev_size:
            prev_root = tree.root()
        try:
            f, _, _, _, t = check_entry(entry, actors)
        except UntrustedActorError as e:
            vio.append(Violation("actor-untrusted", str(e), i))
            continue
        except EventSignatureError as e:
            vio.append(Violation("entry-signature", str(e), i))
            continue
        except EventError as e:
            vio.append(Violation("entry-malformed", str(e), i))
            continue
        kind = f["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
        feed(i, f, t)
        if len(vio) >= max_violations:
            break
    size = tree.size
    report.entries_checked = size
    root = tree.root()
    if size < cp.size and len(vio) < max_violations:
        vio.append(
            Violation(
                "tree-size",
                f"the checkpoint covers {cp.size} entries but there are {size}",
                size,
                {"checkpoint_size": cp.size, "entries": size},
            )
        )
    elif size == cp.size and root != cp.root:
        vio.append(
            Violation(
                "tree-root",
                "the entries' Merkle root differs from the signed checkpoint's",
                None,
                {"computed": root.hex(), "checkpoint": cp.root.hex()},
            )
        )
    # 5. witnesses
    _witnesses(report, cp, parsed, cosignatures, trusted, quorum)
    # 6. the previous checkpoint
    if prev_cp is not None and prev_root is not None and prev_root != prev_cp.root:
        vio.append(
            Violation(
                "fork",
                f"the tree at size {prev_cp.size} differs from the checkpoint kept from last time",
                None,
                {"size": prev_cp.size, "kept": prev_cp.root.hex(), "now": prev_root.hex()},
            )
        )
    # 7. anchored: by what the log's owner cannot make alone
    report.anchored = bool(report.witnesses) or bool(report.previous_size)
    if not report.anchored and not allow_unanchored:
        vio.append(
            Violation(
                "unanchored",
                "only the log's self-consistency was checked: no trusted witness cosigned "
                "the checkpoint and no kept checkpoint was given, so its owner could have "
                "rebuilt and re-signed it (trust a witness's key, pass the checkpoint kept "
                "from the last audit, or allow an unanchored log explicitly)",
                None,
                {"witnesses": report.witnesses, "previous_size": report.previous_size},
            )
        )
    return report


def _previous(
    previous: bytes | None, cp: Checkpoint, logs: list[Verifier], report: AuditReport
) -> Checkpoint | None:
    """The kept checkpoint, when it is the log's and a prefix of ``cp`` (rules
    ``previous-checkpoint``, ``rollback``, ``fork``); sets ``report.previous_size`` once
    it is known to be the log's (then it anchors the audit, whatever it shows)."""
    if previous is None:
        return None
    vio = report.violations
    try:
        pnote = parse_note(previous)
        prev = parse_checkpoint(pnote.text)
        if prev.origin != cp.origin:
            raise NoteError(f"it is a checkpoint of {prev.origin}, not of {cp.origin}")
        if not verify_signatures(pnote.text, pnote.signatures, logs):
            raise NoteError(f"not signed by a trusted key of {cp.origin}")
    except NoteError as e:
        vio.append(Violation("previous-checkpoint", f"previous checkpoint: {e}"))
        return None
    report.previous_size = prev.size
    if prev.size > cp.size:
        vio.append(
            Violation(
                "rollback",
                f"the log shrank from {prev.size} to {cp.size} entries",
                None,
                {"previous": prev.size, "now": cp.size},
            )
        )
        return None
    if prev.size == cp.size and prev.root != cp.root:
        vio.append(
            Violation(
                "fork",
                f"two checkpoints of size {cp.size} with different roots",
                None,
                {"kept": prev.root.hex(), "now": cp.root.hex()},
            )
        )
        return None
    return prev


def _witnesses(
    report: AuditReport,
    cp: Checkpoint,
    parsed: Note,
    cosignatures: bytes,
    trusted: TrustedKeys,
    quorum: int,
) -> None:
    """C2SP tlog-cosignature: the distinct trusted witnesses whose cosignatures of the
    checkpoint verify, in the note or the extra ``cosignatures`` lines (rules
    ``witness-signature``, ``witness-quorum``); a known witness whose line fails is a
    violation (signed-note: a known key's bad signature rejects the note)."""
    try:
        extra = parse_signature_lines(cosignatures) if cosignatures else []
    except NoteError as e:
        report.violations.append(Violation("witness-signature", f"cosignatures: {e}"))
        extra = []
    sigs = [s for s in parsed.signatures if s.name != cp.origin] + extra
    try:
        good = verify_signatures(parsed.text, sigs, trusted.witnesses)
    except NoteError as e:
        report.violations.append(Violation("witness-signature", str(e)))
        good = []
    report.witnesses = sorted({s.name for s in good})
    if len(report.witnesses) < quorum:
        report.violations.append(
            Violation(
                "witness-quorum",
                f"{len(report.witnesses)} trusted witnesses cosigned the "
                f"checkpoint, {quorum} needed",
                None,
                {"witnesses": report.witnesses, "quorum": quorum},
            )
        )
