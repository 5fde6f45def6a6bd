"""C2SP signed-note, tlog-checkpoint and tlog-cosignature formats."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit import note as n
from dataspace.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
)
from dataspace.audit.cosignature import cosign, cosigner, verified_witnesses, witness_verifier
from dataspace.audit.merkle import EMPTY_ROOT


def test_c2sp_example_verifies(vectors_dir: Path) -> None:
    vkey = (vectors_dir / "c2sp" / "signed-note-example.vkey").read_text()
    msg = (vectors_dir / "c2sp" / "signed-note-example.note").read_bytes()
    v = n.parse_vkey(vkey)
    assert v.name == "example.com/foo" and v.key_id.hex() == "530d903a"
    assert v.vkey() == vkey.strip()  # key ID derivation and vkey text round-trip
    note, good = n.open_note(msg, [v])
    assert note.text == b"This is an example message.\n"
    assert [s.name for s in good] == ["example.com/foo"]
    assert note.to_bytes() == msg  # signature line format, byte for byte
    tampered = msg.replace(b"example message", b"example massage")
    with pytest.raises(n.UnverifiedNoteError):
        n.open_note(tampered, [v])


def _signers(k: int) -> list[n.Signer]:
    return [n.Signer(f"key{i}.example", Ed25519PrivateKey.generate()) for i in range(k)]


def test_many_signatures_unknown_ignored_known_failure_rejects() -> None:
    signers = _signers(20)
    text = b"hello\n"
    msg = n.sign_note(text, signers)
    # at least 16 signatures accepted; only the known ones count
    note, good = n.open_note(msg, [signers[3].verifier(), signers[17].verifier()])
    assert {s.name for s in good} == {"key3.example", "key17.example"}
    # unknown keys only: rejected
    with pytest.raises(n.UnverifiedNoteError, match="no trusted key"):
        n.open_note(msg, [_signers(1)[0].verifier()])
    # a known key whose signature fails rejects the note even if another verifies
    bad = n.Note(
        text, (note.signatures[0], n.Signature(signers[1].name, signers[1].key_id, b"\0" * 64))
    )
    with pytest.raises(n.UnverifiedNoteError, match=r"key1\.example"):
        n.open_note(bad.to_bytes(), [signers[0].verifier(), signers[1].verifier()])


@pytest.mark.parametrize(
    "msg",
    [
        b"no signatures\n",
        b"text\n\n",
        b"text\n\n\xe2\x80\x94 name\n",
        b"text\n\n- name AAAA\n",
        b"text\n\n\xe2\x80\x94 name !!!!\n",
        b"text\n\n\xe2\x80\x94 na+me " + base64.b64encode(b"x" * 68) + b"\n",
        b"tab\there\n\n\xe2\x80\x94 name " + base64.b64encode(b"x" * 68) + b"\n",
        b"\xff\n\n\xe2\x80\x94 name " + base64.b64encode(b"x" * 68) + b"\n",
    ],
)
def test_malformed_notes_raise(msg: bytes) -> None:
    with pytest.raises(n.NoteError):
        n.open_note(msg, [])


@pytest.mark.parametrize(
    "vkey",
    [
        "nope",
        "a+b",
        "name+530d903a+AAAA",
        "na me+530d903a+" + "A" * 44,
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
    ],
)
def test_bad_vkeys(vkey: str) -> None:
    with pytest.raises(n.NoteError):
        n.parse_vkey(vkey)


def test_checkpoint_round_trip_byte_exact() -> None:
    cp = Checkpoint("example.com/log", 12345, EMPTY_ROOT, ("ext one", "ext two"))
    body = cp.body()
    assert body == (
        b"example.com/log\n12345\n" + base64.b64encode(EMPTY_ROOT) + b"\next one\next two\n"
    )
    assert parse_checkpoint(body) == cp
    key = Ed25519PrivateKey.generate()
    s = n.Signer("example.com/log", key)
    assert open_checkpoint(sign_checkpoint(cp, s), s.verifier()) == cp
    other = n.Signer("other.example/log", key)
    with pytest.raises(n.NoteError):  # origin must match the key name
        open_checkpoint(sign_checkpoint(cp, other), other.verifier())


@pytest.mark.parametrize(
    "body",
    [
        b"origin\n12\n",
        b"origin\n012\n" + base64.b64encode(EMPTY_ROOT) + b"\n",
        b"origin\n-1\n" + base64.b64encode(EMPTY_ROOT) + b"\n",
        b"origin\n1\n" + base64.b64encode(EMPTY_ROOT[:31]) + b"\n",
        b"origin\n1\n" + base64.b64encode(EMPTY_ROOT),
        b"ori gin\n1\n" + base64.b64encode(EMPTY_ROOT) + b"\n",
        b"origin\n1\n" + base64.b64encode(EMPTY_ROOT) + b"\n\n",
        b"origin\n1\n" + base64.urlsafe_b64encode(b"\xff" * 32) + b"\n",
    ],
)
def test_malformed_checkpoints(body: bytes) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(body)


def test_cosignature_format_and_verification() -> None:
    key = Ed25519PrivateKey.generate()
    w = cosigner("witness.example", key)
    body = Checkpoint("example.com/log", 3, EMPTY_ROOT).body()
    sig = cosign(body, w, timestamp=1_700_000_000)
    raw = base64.b64decode(sig.line().split(b" ")[-1])
    assert len(raw) == 4 + 8 + 64  # key ID, timestamp, signature
    assert raw[4:12] == (1_700_000_000).to_bytes(8, "big")
    assert raw[:4] == n.key_id("witness.example", 0x04, w.public_key)
    v = witness_verifier("witness.example", w.public_key)
    assert [c.timestamp for c in verified_witnesses(body, [sig], [v])] == [1_700_000_000]
    # the same key as a note key (0x01) has another key ID: the line is ignored
    assert verified_witnesses(body, [sig], [n.Verifier("witness.example", w.public_key)]) == []
    other = Checkpoint("example.com/log", 4, EMPTY_ROOT).body()
    with pytest.raises(n.UnverifiedNoteError):
        verified_witnesses(other, [sig], [v])
