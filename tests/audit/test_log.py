"""The durable log: proofs from stored nodes, recovery, fsck, concurrency, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit import merkle
from dataspace.audit.checkpoint import open_checkpoint
from dataspace.audit.log import LogError, TransparencyLog
from dataspace.audit.merkle import MemoryTree, ProofError
from dataspace.audit.storage import LogCorruptError, node_position, stored_nodes
from dataspace.audit.tiles import export_tiles, tile_path

REPO = Path(__file__).resolve().parents[2]


def _log(tmp_path: Path, n: int = 0) -> tuple[TransparencyLog, Ed25519PrivateKey, list[bytes]]:
    key = Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp_path / "log", "test.example/log", key)
    entries = [b'{"n":%d}' % i for i in range(n)]
    if entries:
        log.append_many(entries[: n // 2])
        for e in entries[n // 2 :]:
            log.append(e, publish=False)
    return log, key, entries


def test_post_order_positions() -> None:
    assert [node_position(0, k) for k in range(4)] == [0, 1, 3, 4]
    assert node_position(1, 0) == 2 and node_position(1, 1) == 5 and node_position(2, 0) == 6
    assert stored_nodes(4) == 7 and stored_nodes(5) == 8


def test_proofs_and_roots_match_the_rfc_tree(tmp_path: Path) -> None:
    log, _key, entries = _log(tmp_path, 300)
    tree = MemoryTree.from_entries(entries)
    assert log.size == 300 and log.entries(10, 13) == entries[10:13]
    for size in (1, 2, 3, 5, 8, 64, 127, 128, 129, 300):
        assert log.root(size) == tree.root(size) == merkle.root_hash(entries[:size])
        for i in {0, size // 3, size - 1}:
            p = log.inclusion_proof(i, size)
            assert p == tree.inclusion_proof(i, size)
            merkle.verify_inclusion(i, size, merkle.leaf_hash(entries[i]), p, log.root(size))
        for old in {1, size // 2 or 1, size}:
            p = log.consistency_proof(old, size)
            merkle.verify_consistency(old, size, p, log.root(old), log.root(size))
    with pytest.raises(ProofError, match=r"beyond|not in"):
        log.inclusion_proof(300, 300)
    with pytest.raises(ProofError):
        log.inclusion_proof(0, 301)
    with pytest.raises(ProofError):
        log.consistency_proof(5, 400)


def test_checkpoint_signed_and_reopened(tmp_path: Path) -> None:
    log, _key, entries = _log(tmp_path, 10)
    note = log.checkpoint()
    cp = open_checkpoint(note, log.verifier)
    assert cp.size == 10 and cp.root == merkle.root_hash(entries)
    again = TransparencyLog.open(tmp_path / "log")
    assert again.size == 10 and again.checkpoint() == note
    with pytest.raises(LogError):
        again.append(b"x")  # no key: read-only
    with pytest.raises(LogError):
        TransparencyLog.open(tmp_path / "log", key=Ed25519PrivateKey.generate())


def test_bad_entries_refused(tmp_path: Path) -> None:
    log, _, _ = _log(tmp_path)
    for bad in (b"", b"two\nlines"):
        with pytest.raises(LogError):
            log.append(bad)
    assert log.size == 0


def test_fsck_finds_one_flipped_bit(tmp_path: Path) -> None:
    log, _, _ = _log(tmp_path, 50)
    assert log.fsck().ok
    path = tmp_path / "log" / "hashes"
    data = bytearray(path.read_bytes())
    data[node_position(0, 17) * 32 + 5] ^= 0x10  # one bit of one stored leaf hash
    path.write_bytes(bytes(data))
    report = TransparencyLog.open(tmp_path / "log").fsck()
    assert not report.ok and "entry 17" in report.problems[0]


def test_fsck_finds_altered_entry(tmp_path: Path) -> None:
    _log(tmp_path, 20)
    path = tmp_path / "log" / "entries"
    data = path.read_bytes().replace(b'{"n":7}', b'{"n":8}')
    path.write_bytes(data)
    report = TransparencyLog.open(tmp_path / "log").fsck()
    assert not report.ok and "entry 7" in report.problems[0]


def test_torn_tail_is_recovered(tmp_path: Path) -> None:
    log, key, entries = _log(tmp_path, 9)
    note = log.checkpoint()
    d = tmp_path / "log"
    # a crash mid-append: entries and hashes written, index record half written
    with open(d / "entries", "ab") as f:
        f.write(b'{"n":9}{"n":10')
    with open(d / "hashes", "ab") as f:
        f.write(os.urandom(45))
    with open(d / "index", "ab") as f:
        f.write(b"\0\0\0")
    log2 = TransparencyLog.open(d, key=key)
    assert log2.size == 9 and log2.fsck().ok and log2.checkpoint() == note
    assert (d / "index").stat().st_size == 72
    assert log2.append(b'{"n":9}') == 9
    assert log2.fsck().ok and log2.root() == merkle.root_hash([*entries, b'{"n":9}'])


def test_truncated_files_are_typed_errors(tmp_path: Path) -> None:
    _, key, _ = _log(tmp_path, 9)
    d = tmp_path / "log"
    os.truncate(d / "entries", 20)
    with pytest.raises(LogCorruptError, match="truncated"):
        TransparencyLog.open(d, key=key)
    with pytest.raises(LogCorruptError):
        TransparencyLog.open(d).entries(0, 9)
    os.truncate(d / "hashes", 64)
    with pytest.raises(LogCorruptError):
        TransparencyLog.open(d)  # the checkpoint's root needs the missing nodes
    with pytest.raises(LogError):
        TransparencyLog.open(tmp_path / "nowhere")


def test_checkpoint_disagreeing_with_tree_is_detected(tmp_path: Path) -> None:
    log, _key, _ = _log(tmp_path, 4)
    log.checkpoint()
    os.truncate(tmp_path / "log" / "index", 16)  # the log "lost" entries 2 and 3
    with pytest.raises(LogCorruptError, match="covers 4"):
        TransparencyLog.open(tmp_path / "log")


def _key_file(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    p = tmp_path / "log.key"
    p.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return p


def _appender(tmp_path: Path, key_file: Path, tag: str, batch: int, count: int):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.audit.appender",
            str(tmp_path / "log"),
            str(key_file),
            tag,
            str(batch),
            str(count),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_concurrent_appenders(tmp_path: Path) -> None:
    log, key, _ = _log(tmp_path)
    kf = _key_file(tmp_path, key)
    procs = [_appender(tmp_path, kf, f"p{i}", 7, 140) for i in range(3)]
    acks = {}
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        for line in out.splitlines():
            i, e = line.split(" ", 1)
            assert int(i) not in acks
            acks[int(i)] = e.encode()
    assert sorted(acks) == list(range(420))
    log = TransparencyLog.open(tmp_path / "log", key=key)
    assert log.size == 420 and log.fsck().ok
    assert log.entries() == [acks[i] for i in range(420)]


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    _, key, _ = _log(tmp_path)
    kf = _key_file(tmp_path, key)
    for round_no in range(3):
        p = _appender(tmp_path, kf, f"r{round_no}", 13, -1)
        first = p.stdout.readline()  # it is appending now
        time.sleep(0.2 + 0.3 * round_no)
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        lines = (first + out).splitlines()
        acked = [(int(i), e.encode()) for i, e in (ln.split(" ", 1) for ln in lines)]
        assert acked, "the appender acknowledged nothing before the kill"
        reopened = TransparencyLog.open(tmp_path / "log", key=key)
        assert reopened.fsck().ok
        stored = reopened.entries()
        for i, e in acked:
            assert stored[i] == e
        cp = open_checkpoint(reopened.checkpoint(), reopened.verifier)
        assert cp.size == reopened.size and cp.root == reopened.root()
        reopened.close()


def test_cosignature_attached_to_current_checkpoint(tmp_path: Path) -> None:
    from dataspace.audit.note import parse_note
    from dataspace.audit.witness import Witness, local_post, witness_log

    log, _, _ = _log(tmp_path, 5)
    w = Witness(tmp_path / "w", "w.example", Ed25519PrivateKey.generate(), [log.verifier])
    line = witness_log(log, local_post(w))
    assert log.checkpoint().endswith(line)
    body = parse_note(log.checkpoint()).text
    log.append(b"more")
    assert not log.checkpoint().endswith(line)  # a new checkpoint, not yet cosigned
    with pytest.raises(LogError, match="moved on"):
        log.add_cosignature(body, line)
    witness_log(log, local_post(w), known_size=5)
    assert w.latest("test.example/log").size == 6


def test_export_tiles(tmp_path: Path) -> None:
    log, _, entries = _log(tmp_path, 600)
    n = export_tiles(log, tmp_path / "tiles")
    t = tmp_path / "tiles" / "tile"
    assert (t / "0" / "000").stat().st_size == 256 * 32
    assert (t / "0" / "002.p" / "88").stat().st_size == 88 * 32
    assert (t / "1" / "000.p" / "2").is_file()
    assert (t / "entries" / "000").read_bytes().startswith(len(entries[0]).to_bytes(2, "big"))
    assert n >= 7
    # tlog-tiles paths: N in 3-digit groups, all but the last prefixed with x
    assert tile_path(1234067) == "x001/x234/067" and tile_path(5, 88) == "005.p/88"
