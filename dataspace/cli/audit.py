"""``dataspace audit``: verify, checkpoint, proof, entries, export, show, witness,
cross-check (issue 3).

SOURCE is a site folder (its SITE/log), a log folder, an exported bundle, or the
base URL of a log served by :func:`dataspace.auth.log_api.log_router` (http...).
The ``--trusted-keys`` file format is documented in :mod:`dataspace.audit.trust`.
``verify``, ``show`` and ``cross-check --trusted-keys`` check a log through one function,
:func:`dataspace.audit.verify_source`; this module turns its report into text and exit codes.
``verify`` exits 0 only when every check holds; otherwise it exits 4 and names
the first violation (entry index, rule, values). Other errors exit 1.

Anchoring (DESIGN.md, "Threat model": a site may be hostile to its auditors): a log
is verified only when a witness listed in ``--trusted-keys`` cosigned its checkpoint
(``--witness-quorum N`` asks for N of them) or ``--previous-checkpoint`` gives the
checkpoint the auditor kept from last time, of which it must be an extension. Without
either, only its self-consistency can be checked, which its owner fakes at will by
rebuilding and re-signing it: ``verify`` then fails with rule ``unanchored``, unless
``--allow-unanchored`` accepts that explicitly (exit 0, but the report still says
``anchored: false`` and ``verified: false``, and the text says "self-consistent only").
``cross-check --trusted-keys`` verifies both logs the same way; ``show`` never fails on
it and says whether the log is anchored.

Witnesses (DESIGN.md, "Audit log"): a source's checkpoint is its witnessed one
(``TransparencyLog.witnessed_checkpoint``): the newest one its current witness set
cosigned, as the service that pushes it wrote that set (``dataspace.audit.witnesspolicy``;
a witness failing for too long is stale and reported, with the size it cosigned last,
by ``verify`` and ``witness --json``); ``witness`` pushes a log's checkpoint to
witnesses once (for cron; the services push on their own) and exits 5 when one did
not cosign; ``cross-check SITE HUB`` compares a site's log with the hub's
(``dataspace.audit.crosscheck``).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dataspace.audit import (
    AuditReport,
    LogError,
    LogSource,
    ProofError,
    Released,
    RoundRecord,
    TransparencyLog,
    TrustedKeys,
    checkpoint_of_note,
    cross_check,
    load_trusted_keys,
    released_models,
    verify_source,
    write_bundle,
)
from dataspace.audit.note import Note, parse_note, parse_signature_lines
from dataspace.audit.report import stale_witness_text
from dataspace.audit.source import open_source
from dataspace.audit.storage import META
from dataspace.audit.witnessing import (
    WitnessPusher,
    http_post,
    policy_settings,
    read_witness_key,
    witness_all,
    witness_peer,
)
from dataspace.auth.httpsig import sign_url_request
from dataspace.cli._ui import Col, escape, out_console, print_table
from dataspace.errors import DataspaceError
from dataspace.site.identity import load_private_key

err = Console(stderr=True, soft_wrap=True)  # messages name paths and hashes: never split them


def _remember_key(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    ctx.meta["audit_key"] = value


#: every command that reads a SOURCE may sign its requests to a service's log
key_option = click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DATASPACE_KEY",
    expose_value=False,
    callback=_remember_key,
    help="Identity key that signs requests to a hub or connector URL "
    "(holder, auditor or operator; default $DATASPACE_KEY).",
)


def _open(source: str) -> LogSource:
    """open_source, signing requests with --key when SOURCE is a URL."""
    key_path = click.get_current_context().meta.get("audit_key")
    sign = None
    if key_path is not None and source.startswith(("http://", "https://")):
        key = load_private_key(key_path)

        def sign(method: str, url: str, body: bytes) -> dict[str, str]:
            return sign_url_request(key, method, url, body)

    return open_source(source, sign=sign)


class AuditFailed(DataspaceError):
    """The log does not verify; the message names the first violation."""

    exit_code = 4


def _out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _line(obj: dict) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


def _progress(it: Iterator[bytes], total: int, label: str) -> Iterator[bytes]:
    if total < 2000:
        yield from it
        return
    cols = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, console=err, transient=True) as p:
        task = p.add_task(label, total=total)
        for i, e in enumerate(it, 1):
            yield e
            if i % 1000 == 0:
                p.update(task, completed=i)


def _full_note(src: LogSource) -> bytes:
    """The checkpoint with every cosignature the source has, as one note."""
    note = src.checkpoint()
    extra = src.cosignatures()
    if not extra:
        return note
    parsed = parse_note(note)
    return Note(parsed.text, parsed.signatures + tuple(parse_signature_lines(extra))).to_bytes()


def _verifying(label: str):
    """A progress bar over the entries a verification streams (``verify_source(progress=)``)."""
    return lambda entries, total: _progress(entries, total, label)


@click.group("audit")
def group() -> None:
    """The transparency log: verify it, read it, prove things from it, export it."""


@group.command("verify")
@click.argument("source")
@key_option
@click.option(
    "--trusted-keys",
    "trusted_keys",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Log, witness and actor keys (format: dataspace.audit.trust).",
)
@click.option(
    "--previous-checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The checkpoint kept from the last audit.",
)
@click.option(
    "--witness-quorum",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Distinct trusted witnesses that must cosign.",
)
@click.option(
    "--allow-unanchored",
    is_flag=True,
    help="Accept a log that no trusted witness cosigned and no --previous-checkpoint "
    "anchors: only its self-consistency is then checked (reported as unanchored).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify_cmd(
    source: str,
    trusted_keys: Path,
    previous_checkpoint: Path | None,
    witness_quorum: int,
    allow_unanchored: bool,
    as_json: bool,
) -> None:
    """Check signatures, tree, witnesses, consistency and the contract/budget rules.

    The log must be anchored by a trusted witness's cosignature or by the checkpoint
    kept from the last audit (--previous-checkpoint), unless --allow-unanchored.
    """
    trusted = load_trusted_keys(trusted_keys)
    previous = previous_checkpoint.read_bytes() if previous_checkpoint else None
    report = verify_source(
        _open(source),
        trusted,
        previous=previous,
        quorum=witness_quorum,
        allow_unanchored=allow_unanchored,
        keep_rounds=as_json,  # per-round records only for --json (bounded memory otherwise)
        progress=_verifying("verifying"),
    )
    if as_json:
        _line(report.to_json())
    else:
        status = _status_text(report)
        witnesses = ", ".join(report.witnesses) or "none"
        err.print(
            status
            + escape(
                f" {report.origin} size {report.size} root {report.root}; "
                f"{report.entries_checked} entries; witnesses: {witnesses}"
                f" (quorum {witness_quorum}); {report.round_count} rounds"
                + (
                    f"; kept checkpoint of size {report.previous_size}"
                    if report.previous_size is not None
                    else ""
                )
            ),
            highlight=False,
        )
        if report.latest_size is not None and report.latest_size > report.size:
            err.print(
                f"  the log's latest checkpoint is of size {report.latest_size}; "
                f"its witnesses cosigned up to {report.size}",
                highlight=False,
            )
        for w in report.stale_witnesses:
            err.print(f"  stale witness: {stale_witness_text(w)}", highlight=False, markup=False)
        if report.ok and not report.anchored:
            err.print(f"  {UNANCHORED_TEXT}", highlight=False, markup=False)
        for v in report.violations[:20]:
            err.print(f"  {v}", highlight=False, markup=False)
    if not report.ok:
        raise AuditFailed(
            f"verification failed: {report.first} ({len(report.violations)} violations)"
        )


#: what an accepted unanchored log was checked for, in words
UNANCHORED_TEXT = (
    "UNANCHORED: no trusted witness cosigned this checkpoint and no kept checkpoint was "
    "given; only the log's self-consistency was checked (its owner could have rebuilt "
    "and re-signed it)"
)


def _status_text(report: AuditReport) -> str:
    """verified / self-consistent only / FAILED, as rich markup."""
    if not report.ok:
        return "[red]FAILED[/red]"
    if not report.anchored:
        return "[yellow]self-consistent only (unanchored)[/yellow]"
    return "[green]verified[/green]"


@group.command("checkpoint")
@click.argument("source")
@key_option
def checkpoint_cmd(source: str) -> None:
    """Print the latest signed checkpoint (C2SP signed note), byte for byte.

    With its witness cosignatures: the latest checkpoint that all of the log's
    witnesses cosigned (which may trail the newest one until they answer).
    """
    _out(_full_note(_open(source)))


@group.command("proof")
@click.argument("source")
@key_option
@click.option("--index", type=click.IntRange(min=0), help="Inclusion proof of this entry.")
@click.option("--from", "old", type=click.IntRange(min=0), help="Consistency proof from this size.")
@click.option("--size", type=click.IntRange(min=0), help="Tree size (default: the checkpoint's).")
def proof_cmd(source: str, index: int | None, old: int | None, size: int | None) -> None:
    """An RFC 9162 inclusion (--index) or consistency (--from) proof, one JSON line, hex."""
    if (index is None) == (old is None):
        raise click.UsageError("give exactly one of --index I or --from M")

    src = _open(source)
    if size is None:
        size = checkpoint_of_note(src.checkpoint()).size
    if index is not None:
        if index >= size:
            raise ProofError(f"index {index} is beyond the tree of size {size}")
        leaf, hashes = src.inclusion_proof(index, size)
        _line(
            {
                "index": index,
                "size": size,
                "leaf_hash": leaf.hex(),
                "hashes": [h.hex() for h in hashes],
            }
        )
    else:
        hashes = src.consistency_proof(old, size)
        _line({"from": old, "size": size, "hashes": [h.hex() for h in hashes]})


@group.command("entries")
@click.argument("source")
@key_option
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--end", type=click.IntRange(min=0), help="Exclusive (default: the log's size).")
def entries_cmd(source: str, start: int, end: int | None) -> None:
    """Print entries as JSON lines: exactly the bytes that were hashed."""
    src = _open(source)
    for e in src.iter_entries(start, end):
        sys.stdout.buffer.write(e + b"\n")
    sys.stdout.buffer.flush()


@group.command("export")
@click.argument("source")
@key_option
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def export_cmd(source: str, directory: Path) -> None:
    """Write a portable bundle: entries.jsonl, checkpoint, cosignatures."""
    src = _open(source)
    note = _full_note(src)
    size = checkpoint_of_note(note).size
    n = write_bundle(directory, note, _progress(src.iter_entries(0, size), size, "exporting"))
    err.print(f"exported {n} entries to {directory}", highlight=False, markup=False)


@group.command("show")
@click.argument("source")
@key_option
@click.option("--dataset", help="Dataset id or fingerprint.")
@click.option("--consumer", help="Consumer public key (base64) or name.")
@click.option("--contract", help="Contract id.")
@click.option(
    "--trusted-keys",
    "trusted_keys",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check the checkpoint signature and witnesses too.",
)
@click.option(
    "--hub",
    "hub_source",
    default=None,
    help="The hub's log (folder, bundle or URL): the model column then shows each run's "
    "released model (SHA-256 of the model file, from the hub's run.finished).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_cmd(
    source: str,
    dataset: str | None,
    consumer: str | None,
    contract: str | None,
    trusted_keys: Path | None,
    hub_source: str | None,
    as_json: bool,
) -> None:
    """Who trained on what, for which purpose, how much epsilon, which model; does it verify.

    The model of a round is the model its run released, as the hub's ``run.finished``
    says (with --hub, when the hub's log verifies and the run lists the round's
    contract); otherwise the round's own update, as the site's ``round.finished`` says.
    The ``model of`` column (``model_source`` in --json) says which.
    """
    if sum(x is not None for x in (dataset, consumer, contract)) != 1:
        raise click.UsageError("give exactly one of --dataset, --consumer, --contract")

    trusted = load_trusted_keys(trusted_keys) if trusted_keys else TrustedKeys()
    report = _shown_report(source, trusted, trusted_keys is not None, "verifying")
    hub = None if hub_source is None else _hub_releases(hub_source, trusted, trusted_keys)
    # the site's own run.finished entries: the released models its rounds went into
    own = released_models(_open(source).iter_entries(0, report.size)) if report.ok else {}
    names = {c: (info.get("consumer")) for c, info in report.contracts.items()}

    def keep(r) -> bool:
        if dataset is not None:
            return dataset in (r.dataset_id, r.fingerprint)
        if contract is not None:
            return r.contract_id == contract
        return consumer in (r.consumer, names.get(r.contract_id))

    rows = [r for r in report.rounds if keep(r)]
    bad = {v.index for v in report.violations}
    out = [
        {
            "index": r.index,
            "time": r.time,
            "contract_id": r.contract_id,
            "dataset_id": r.dataset_id,
            "fingerprint": r.fingerprint,
            "consumer": r.consumer,
            "purpose": r.purpose,
            "run_id": r.run_id,
            "round": r.round,
            "epsilon": r.epsilon,
            "model_sha256": r.model_sha256,
            **_model_of(r, hub, own),
            "privacy_unit": r.privacy_unit,
            "verifies": r.ok and r.index not in bad and report.ok,
        }
        for r in rows
    ]
    total = sum(r["epsilon"] for r in out)
    if as_json:
        _line(
            {
                "log_verifies": report.ok,
                "anchored": report.anchored,
                "first_violation": str(report.first) if report.first else None,
                "checkpoint_checked": trusted_keys is not None,
                "epsilon_total": total,
                "hub_log": None if hub is None else hub.summary(),
                "rounds": out,
            }
        )
        return
    # every id in full (an auditor copies them): a table where it fits, else one block a round
    cols = [
        Col("entry", justify="right"),
        Col("time"),
        Col("contract", ident=True),
        Col("dataset", ident=True),
        Col("consumer", ident=True),
        Col("purpose"),
        Col("run/round", ident=True),
        Col("ε", justify="right"),
        Col("unit"),
        Col("model of"),
        Col("model sha256", ident=True),
        Col("ok"),
    ]
    rows = [
        (
            str(r["index"]),
            str(r["time"]),
            str(r["contract_id"]),
            str(r["dataset_id"]),
            str(r["consumer"] or ""),
            str(r["purpose"]),
            f"{r['run_id']}/{r['round']}",
            f"{r['epsilon']:g}",
            str(r["privacy_unit"] or "-"),
            MODEL_OF[r["model_source"]],
            str(r["model"] or ""),
            "yes" if r["verifies"] else "NO",
        )
        for r in out
    ]
    print_table(
        out_console(), f"{report.origin} — {len(out)} rounds, epsilon {total:g}", cols, rows
    )
    state = "verifies" if report.ok else f"does NOT verify: {report.first}"
    if report.ok and not report.anchored:
        state = "is self-consistent only (unanchored: no trusted witness cosigned it)"
    checked = "" if trusted_keys else " (checkpoint signature not checked: no --trusted-keys)"
    click.echo(f"log {state}{checked}")
    click.echo(_model_note(hub))


#: the ``model of`` column: where the model hash of a round comes from
MODEL_OF = {
    "run.finished": "released model",
    "site run.finished": "released model (site's record)",
    "round.finished": "round update",
}


def _shown_report(source: str, trusted: TrustedKeys, checked: bool, label: str) -> AuditReport:
    """A log verified as ``show`` does: traced, its anchoring stated, not judged."""
    report = verify_source(
        _open(source), trusted, allow_unanchored=True, progress=_verifying(label)
    )
    if not checked:  # only the log's own consistency can be judged
        report.violations = [v for v in report.violations if v.rule != "checkpoint-signature"]
    return report


class _HubReleases:
    """What ``show --hub`` read of the hub's log: its verification and released models."""

    def __init__(self, source: str, report: AuditReport, released: dict[str, Released]) -> None:
        self.source, self.report, self.released = source, report, released

    def model(self, r: RoundRecord) -> Released | None:
        """The released model of ``r``'s run, if the hub's log verifies and lists its contract."""
        rel = self.released.get(str(r.run_id)) if self.report.ok else None
        return rel if rel is not None and r.contract_id in rel.contracts else None

    def summary(self) -> dict[str, object]:
        rep = self.report
        return {
            "source": self.source,
            "origin": rep.origin,
            "verifies": rep.ok,
            "anchored": rep.anchored,
            "first_violation": str(rep.first) if rep.first else None,
            "runs_finished": len(self.released),
        }


def _hub_releases(source: str, trusted: TrustedKeys, trusted_keys: Path | None) -> _HubReleases:
    """Verify the hub's log and read its ``run.finished`` entries (the checked ones only)."""
    report = _shown_report(source, trusted, trusted_keys is not None, "verifying the hub's log")
    released = released_models(_open(source).iter_entries(0, report.size))
    return _HubReleases(source, report, released)


def _model_of(
    r: RoundRecord, hub: _HubReleases | None, own: dict[str, Released]
) -> dict[str, object]:
    """The model a row shows: the run's released model as the hub's log says it (--hub),
    else as the site's own run.finished records it, else the round's update."""
    rel, source = None if hub is None else hub.model(r), "run.finished"
    if rel is None:
        mine = own.get(str(r.run_id))
        if mine is not None and r.contract_id in mine.contracts:
            rel, source = mine, "site run.finished"
    return {
        "released_model_sha256": None if rel is None else rel.model_sha256,
        "model": r.model_sha256 if rel is None else rel.model_sha256,
        "model_source": "round.finished" if rel is None else source,
    }


def _model_note(hub: _HubReleases | None) -> str:
    """One line on what the model column shows."""
    base = (
        "model: 'released model' is the SHA-256 of the model file a run released "
        "(the hub's run.finished); 'round update' is the hash of a round's update "
        "(the site's round.finished)"
    )
    if hub is None:
        return base + (
            "; 'released model (site's record)' is the site's own run.finished, which "
            "repeats the hub's: give --hub HUB_LOG to check it against the hub's log"
        )
    rep = hub.report
    if not rep.ok:
        return base + f"; the hub's log does NOT verify ({rep.first}), so none is shown"
    anchored = "" if rep.anchored else ", self-consistent only (unanchored)"
    n = len(hub.released)
    return base + f"; the hub's log verifies{anchored}; runs that released a model: {n}"


class WitnessingFailed(DataspaceError):
    """A witness did not cosign; the message names it and why."""

    exit_code = 5


def _witness_key(path: Path):
    """A witness key file: vkey text (type 0x04), or an identity file (X.pub, JSON): then
    the witness key is the one that identity endorses (dataspace.audit.witnesskey)."""
    text = path.read_text()
    if text.lstrip().startswith("{"):
        obj = json.loads(text)
        return (str(obj["name"]), base64.b64decode(obj["public_key"]))
    return read_witness_key(text)


@group.command("witness")
@click.argument("source")
@click.option(
    "--witness",
    "witnesses",
    multiple=True,
    required=True,
    help="A witness: its add-checkpoint URL, or a hub's or connector's root URL (repeatable).",
)
@click.option(
    "--witness-key",
    "witness_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The witness's key, in --witness order: a vkey file (type 0x04) or an identity "
    ".pub. Without it the cosignature is kept unverified.",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per call.")
@click.option(
    "--policy",
    "record_policy",
    is_flag=True,
    help="Record these witnesses as the log's witness set (LOG/witnesses.json), for a log "
    "that no service pushes (cron): its witnessed checkpoint then follows them, and one "
    "failing for $DATASPACE_WITNESS_STALE_S s (300) no longer holds it back. Needs a "
    "--witness-key for each witness.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def witness_cmd(
    source: str,
    witnesses: tuple[str, ...],
    witness_keys: tuple[Path, ...],
    timeout: float,
    record_policy: bool,
    as_json: bool,
) -> None:
    """Have witnesses cosign the latest checkpoint of SOURCE (a site or log folder), once.

    Sends a C2SP tlog-witness add-checkpoint request to each witness, checks the
    cosignature against --witness-key, and keeps it next to the checkpoint it signs.
    Exits 5 when a witness did not cosign (it refused: fork or rollback; or no answer).
    With --json, each error carries ``since_size`` (the largest kept checkpoint that
    witness cosigned) and ``stale`` lists the log's stale witnesses (its service's
    witness set), with ``witnessed_size``, the size of the log's witnessed checkpoint.
    """
    if len(witness_keys) > len(witnesses):
        raise click.UsageError("more --witness-key than --witness options")
    if record_policy and len(witness_keys) != len(witnesses):
        raise click.UsageError("--policy needs a --witness-key for every --witness")
    p = Path(source)
    folder = p if (p / META).is_file() else p / "log"
    if not (folder / META).is_file():
        raise LogError(f"{p} is not a site folder or a log folder")
    keys = [_witness_key(k) for k in witness_keys]
    peers = [witness_peer(u, keys[i] if i < len(keys) else None) for i, u in enumerate(witnesses)]
    with TransparencyLog.open(folder) as log:
        if record_policy:  # the pusher of the services, one pass: it writes the policy
            pusher = WitnessPusher(log, lambda: peers, post=http_post(timeout), **policy_settings())
            got, errors = pusher.push_all()
        else:
            got, errors = witness_all(log, peers, post=http_post(timeout))
        cp = checkpoint_of_note(log.checkpoint())
        seen = log.last_cosigned()  # what each witness cosigned last, of the kept checkpoints
        status = log.witnessing_status()
    stale = [
        {"witness": w["witness"], "since_size": w["stale_since_size"], "error": w["error"]}
        for w in status["witnesses"]
        if w["stale"]
    ]
    if as_json:
        _line(
            {
                "origin": cp.origin,
                "size": cp.size,
                "cosignatures": [c.to_json() for c in got],
                "errors": [
                    {
                        "witness": e.witness,
                        "url": e.url,
                        "status": e.status,
                        "error": str(e),
                        "since_size": seen.get(e.witness),
                    }
                    for e in errors
                ],
                "ok": not errors,
                "witnessed_size": status["witnessed_size"],
                "stale": stale,
            }
        )
    else:
        for c in got:
            how = "verified" if c.verified else "NOT verified (no --witness-key)"
            click.echo(f"{c.witness} cosigned {c.origin} size {c.size} ({how})")
            click.echo(c.line.decode().rstrip("\n"))
        for e in errors:
            last = seen.get(e.witness)
            since = f" (it cosigned up to size {last})" if last is not None else ""
            err.print(f"[red]not cosigned[/red]: {escape(f'{e}{since}')}", highlight=False)
        for w in stale:
            err.print(
                f"stale witness of the log: {stale_witness_text(w)}", highlight=False, markup=False
            )
    if errors:
        raise WitnessingFailed(
            f"{len(errors)} of {len(peers)} witnesses did not cosign {cp.origin} size {cp.size}: "
            + "; ".join(str(e) for e in errors)
        )


@group.command("cross-check")
@click.argument("site_source")
@click.argument("hub_source")
@key_option
@click.option(
    "--trusted-keys",
    "trusted_keys",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also verify both logs (signatures, trees, rules, anchoring) before comparing them.",
)
@click.option(
    "--allow-unanchored",
    is_flag=True,
    help="With --trusted-keys: accept a log no trusted witness cosigned (self-consistent only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cross_check_cmd(
    site_source: str,
    hub_source: str,
    trusted_keys: Path | None,
    allow_unanchored: bool,
    as_json: bool,
) -> None:
    """Compare a site's log with the hub's: every round of the site's in the hub's runs,
    every round, contract and dataset the hub reports for the site in the site's log.

    Exits 0 when they match, 4 naming the first mismatch otherwise (rules:
    dataspace.audit.crosscheck).
    """
    site, hub = _open(site_source), _open(hub_source)
    verified: dict[str, AuditReport] = {}
    if trusted_keys is not None:
        trusted = load_trusted_keys(trusted_keys)
        for name, src in (("site", site), ("hub", hub)):
            verified[name] = verify_source(
                src,
                trusted,
                allow_unanchored=allow_unanchored,
                keep_rounds=False,
                progress=_verifying("verifying"),
            )

    def entries(src: LogSource) -> Iterator[bytes]:
        size = checkpoint_of_note(src.checkpoint()).size
        return src.iter_entries(0, size)

    report = cross_check(entries(site), entries(hub))
    bad_logs = {k: str(r.first) for k, r in verified.items() if not r.ok}
    if as_json:
        _line(
            report.to_json()
            | {
                "verified": {k: r.verified for k, r in verified.items()},
                "anchored": {k: r.anchored for k, r in verified.items()},
            }
        )
    else:
        state = "[green]match[/green]" if report.ok else "[red]MISMATCH[/red]"
        err.print(
            state
            + escape(
                f" site {report.site} ({report.site_entries} entries) and hub {report.hub} "
                f"({report.hub_entries} entries); {report.rounds_matched} rounds matched"
            ),
            highlight=False,
        )
        for m in report.mismatches[:20]:
            err.print(f"  {m}", highlight=False, markup=False)
        for k, v in bad_logs.items():
            err.print(f"  {k} log does not verify: {v}", highlight=False, markup=False)
        for k, r in verified.items():
            if r.ok and not r.anchored:
                err.print(f"  {k} log: {UNANCHORED_TEXT}", highlight=False, markup=False)
    if bad_logs:
        k, v = next(iter(bad_logs.items()))
        raise AuditFailed(f"the {k} log does not verify: {v}")
    if not report.ok:
        raise AuditFailed(
            f"cross-check failed: {report.first} ({len(report.mismatches)} mismatches)"
        )
