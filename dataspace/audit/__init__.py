"""The transparency log: RFC 9162 Merkle tree, C2SP checkpoints and notes, events, verification.

One module per spec section or job:

==================  ==============================================================
``merkle``          RFC 9162 2.1: hashes, the one Merkle fold, proofs and their checks
``note``            C2SP signed-note: notes, signature lines, verifier keys
``checkpoint``      C2SP tlog-checkpoint: the signed tree head
``cosignature``     C2SP tlog-cosignature: a witness's timestamped signature
``events``          the entries: RFC 8785 canonical JSON events signed by their actor
``storage``         a log folder's files and their commit protocol
``log``             :class:`TransparencyLog`: append, read, prove, sign, fsck
``cosigning``       a log's cosigned checkpoints and its witnessed one
``witnesspolicy``   which checkpoint counts as witnessed (``LOG/witnesses.json``)
``witness``         C2SP tlog-witness, the server side: cosign after a consistency proof
``witnessing``      C2SP tlog-witness, the client side: push checkpoints to witnesses
``tiles``           C2SP tlog-tiles: the log as static files
``bundle``          a portable audit bundle (offline verification)
``source``          where an auditor reads a log: folder, bundle or URL
``trust``           the auditor's trusted keys (``--trusted-keys``)
``rules``           the data space's business rules over the events
``report``          what an audit finds
``verify``          the auditor: :func:`verify_source`, the front door, and :func:`audit`
``crosscheck``      a site's log against the hub's; the models the hub's runs released
==================  ==============================================================

Everything here imports only the standard library, cryptography, rfc8785 and
``dataspace.errors`` / ``dataspace.accountant`` (imported by this package).
"""

from __future__ import annotations

from dataspace.audit.bundle import BundleError, write_bundle
from dataspace.audit.checkpoint import Checkpoint, CheckpointError, checkpoint_of_note
from dataspace.audit.crosscheck import (
    CrossCheckReport,
    Mismatch,
    Released,
    cross_check,
    released_models,
)
from dataspace.audit.events import (
    Event,
    EventError,
    EventSignatureError,
    UntrustedActorError,
    make_event,
    parse_event,
    verify_event,
)
from dataspace.audit.log import FsckReport, TransparencyLog
from dataspace.audit.merkle import ProofError
from dataspace.audit.note import NoteError, UnverifiedNoteError, Verifier
from dataspace.audit.report import AuditReport, RoundRecord, Violation
from dataspace.audit.source import LogSource, open_source
from dataspace.audit.storage import LogCorruptError, LogError
from dataspace.audit.trust import TrustedKeys, TrustedKeysError, load_trusted_keys
from dataspace.audit.verify import audit, verify_source
from dataspace.audit.witness import Witness, WitnessError
from dataspace.audit.witnessing import (
    BadCosignatureError,
    WitnessingError,
    WitnessRefusedError,
    WitnessUnreachableError,
)
from dataspace.audit.witnesspolicy import WitnessPolicy, WitnessPolicyError

__all__ = [
    "AuditReport",
    "BadCosignatureError",
    "BundleError",
    "Checkpoint",
    "CheckpointError",
    "CrossCheckReport",
    "Event",
    "EventError",
    "EventSignatureError",
    "FsckReport",
    "LogCorruptError",
    "LogError",
    "LogSource",
    "Mismatch",
    "NoteError",
    "ProofError",
    "Released",
    "RoundRecord",
    "TransparencyLog",
    "TrustedKeys",
    "TrustedKeysError",
    "UntrustedActorError",
    "UnverifiedNoteError",
    "Verifier",
    "Violation",
    "Witness",
    "WitnessError",
    "WitnessPolicy",
    "WitnessPolicyError",
    "WitnessRefusedError",
    "WitnessUnreachableError",
    "WitnessingError",
    "audit",
    "checkpoint_of_note",
    "cross_check",
    "load_trusted_keys",
    "make_event",
    "open_source",
    "parse_event",
    "released_models",
    "verify_event",
    "verify_source",
    "write_bundle",
]
