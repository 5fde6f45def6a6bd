"""C2SP exact (issue 19): the hub's real HTTP answers against the C2SP texts' rules.

Each test names the section of the vendored spec text it checks
(tests/vectors/c2sp/spec/: tlog-witness.md, tlog-tiles.md, tlog-checkpoint.md,
signed-note.md, tlog-cosignature.md). Hashes are recomputed here from the entries
with hashlib (RFC 6962 2.1), not with the project's Merkle code; signatures are
checked with the keys the services wrote (``DATA/witness.vkey``), or by
cryptography directly. The adversarial cases come last.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import struct
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi.testclient import TestClient

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.cosignature import witness_verifier
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import Verifier, parse_note, parse_vkey, raw_public
from dataspace.audit.tiles import (
    TileEntryTooLargeError,
    TilePathError,
    export_tiles,
    parse_tile_path,
)
from dataspace.audit.trust import TrustedKeys
from dataspace.audit.verify import verify_source
from dataspace.audit.witness import Witness, request_body, witness_log
from dataspace.audit.witnesskey import WitnessKeyError, check_endorsement
from dataspace.auth.httpsig import HttpSigAuth
from dataspace.auth.service import public_log
from dataspace.hub.app import create_app
from dataspace.site.identity import load_private_key
from tests.services.conftest import hub_parties

SPEC = Path(__file__).resolve().parents[1] / "vectors" / "c2sp" / "spec"


# --- RFC 6962 2.1, written out again here -------------------------------------------------
def _leaf(e: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + e).digest()


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1 MTH over leaf hashes (k: the largest power of two below n)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _spec_tile_path(n: int) -> str:
    """tlog-tiles "Merkle Tree": "zero-padded 3-digit path elements. All but the last path
    element MUST begin with an x" (written from the text, not from dataspace.audit.tiles)."""
    s = str(n)
    s = "0" * (-len(s) % 3) + s
    parts = [s[i : i + 3] for i in range(0, len(s), 3)]
    return "/".join(["x" + p for p in parts[:-1]] + [parts[-1]])


def _max_age(cache_control: str) -> int:
    for d in cache_control.split(","):
        k, _, v = d.strip().partition("=")
        if k == "max-age":
            return int(v)
    raise AssertionError(f"no max-age in {cache_control!r}")


# --- one real hub, its log grown to 600 entries ---------------------------------------------
@pytest.fixture
def hub(tmp_path: Path):
    parties, trust = hub_parties(tmp_path / "keys")
    data = tmp_path / "hub"
    app = create_app(data, trust=trust)
    with TestClient(app) as c:
        yield c, parties, data


def _grow(data: Path, n: int, big: int | None = None) -> list[bytes]:
    """Append ``n`` entries to the hub's log (the hub's own key, as the hub appends);
    entry ``big`` is made 70,000 bytes long. Returns every entry of the log."""
    with TransparencyLog.open(data / "log", key=load_private_key(data / "hub.key")) as log:
        es = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (70_000 if i == big else 10)) for i in range(n)]
        log.append_many(es)
        return log.entries(0, log.size)


def _holder_log(tmp_path: Path, parties, name: str = "site-a") -> TransparencyLog:
    key = parties["holder"].key
    log = TransparencyLog.create(tmp_path / f"{name}-log", name, key)
    log.append_many([make_event("dataset.enrolled", key, name, dataset_id=d) for d in "abc"])
    return log


def _post(c: TestClient):
    def post(body: bytes) -> tuple[int, bytes]:
        r = c.post("/v1/log/add-checkpoint", content=body)
        return r.status_code, r.content

    return post


def _hub_witness(data: Path) -> Verifier:
    return parse_vkey((data / "witness.vkey").read_text().strip())


# --- tlog-witness add-checkpoint: the 409 answer ---------------------------------------------
def test_409_content_type_is_exactly_text_x_tlog_size(hub, tmp_path):
    """tlog-witness "add-checkpoint": 409, body the latest size and a newline, "MUST have a
    Content-Type of text/x.tlog.size" (Starlette would add "; charset=utf-8")."""
    assert "`Content-Type` of `text/x.tlog.size`" in (SPEC / "tlog-witness.md").read_text()
    c, parties, _ = hub
    log = _holder_log(tmp_path, parties)
    witness_log(log, _post(c))
    r = c.post("/v1/log/add-checkpoint", content=request_body(1, [], log.checkpoint()))
    assert r.status_code == 409
    assert r.headers["content-type"] == "text/x.tlog.size"
    assert r.content == b"3\n"


# --- tlog-tiles: checkpoint, tiles, entry bundles --------------------------------------------
def test_checkpoint_is_public_text_plain_and_cached_a_few_seconds_at_most(hub):
    """tlog-tiles "Checkpoints": text/plain; charset=utf-8; mutable, so its headers SHOULD
    prevent caching beyond a few seconds."""
    c, _, data = hub
    r = c.get("/v1/log/checkpoint")  # unsigned: public
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert _max_age(r.headers["cache-control"]) <= 10
    cp = checkpoint_of_note(r.content)
    hub_key = Verifier(cp.origin, raw_public(load_private_key(data / "hub.key")))
    assert hub_key.key_id in {s.key_id for s in parse_note(r.content).signatures}


def test_tiles_rebuild_the_checkpoints_root_and_are_cached_for_good(hub):
    """tlog-tiles "Merkle Tree": the n-th tile at level l holds MTH(D[(n*256+i)*256**l :
    (n*256+i+1)*256**l]); full tiles 8,192 bytes; partial tiles `.p/W`; immutable, so
    long-lived caching; application/octet-stream. Public (unsigned requests)."""
    c, _, data = hub
    entries = _grow(data, 600)
    cp = checkpoint_of_note(c.get("/v1/log/checkpoint").content)
    size = cp.size
    assert size == len(entries) and size > 512
    leaves = []
    for n in range(size // 256 + 1):
        w = min(256, size - n * 256)
        path = _spec_tile_path(n) + ("" if w == 256 else f".p/{w}")
        r = c.get(f"/v1/log/tile/0/{path}")
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"] == "application/octet-stream"
        cc = r.headers["cache-control"]
        assert "immutable" in cc and "public" in cc and _max_age(cc) >= 86400
        assert r.content == b"".join(_leaf(e) for e in entries[n * 256 : n * 256 + w])
        leaves += [r.content[i : i + 32] for i in range(0, len(r.content), 32)]
    assert _mth(leaves) == cp.root  # a client rebuilds the root from the tiles alone
    # level 1: the MTH of each full level-0 tile ("Note that a tree of size 256 ...")
    r = c.get(f"/v1/log/tile/1/000.p/{size // 256}")
    assert r.status_code == 200
    assert r.content == b"".join(_mth(leaves[k * 256 : (k + 1) * 256]) for k in range(size // 256))
    # a partial tile of a smaller tree stays servable (clients fetch what their checkpoint
    # needs, the log having grown since)
    assert c.get("/v1/log/tile/0/001.p/5").content == b"".join(leaves[256:261])


def test_tiles_beyond_the_tree_are_404_and_never_cached(hub):
    """tlog-tiles "Partial Tiles": "Empty tiles MUST NOT be served"; a tile not there yet
    will be, so its 404 must not be cached."""
    c, _, data = hub
    size = len(_grow(data, 600))
    last = size % 256
    for path in (
        "tile/0/002",  # full tile of a partial one
        f"tile/0/002.p/{last + 1}",
        "tile/0/003.p/1",
        "tile/2/000.p/1",  # level 2 is empty below 65,536 entries
        "tile/0/x999/x999/x999/x999/x999/x999/999",  # huge N
        "tile/entries/005",
    ):
        r = c.get("/v1/log/" + path, auth=None)
        assert r.status_code in (401, 404), (path, r.status_code)
        assert r.status_code != 200
        if r.status_code == 404:
            assert r.headers["cache-control"] == "no-store"
    assert c.get(f"/v1/log/tile/0/002.p/{last}").status_code == 200


def test_entry_bundles_hash_to_the_level_0_tiles_for_signed_readers_only(hub):
    """tlog-tiles "Log entries": big-endian uint16 length-prefixed entries, each hashing to
    the matching level-0 tile hash; compressed with gzip when the client accepts it.

    Bundles are the log's entries, which name consumers and contracts: like GET /entries
    they need a holder, auditor or operator signature, and no shared cache keeps them."""
    c, parties, data = hub
    entries = _grow(data, 300)
    assert c.get("/v1/log/tile/entries/000").status_code == 401  # unsigned
    auditor = HttpSigAuth(parties["auditor"].key)
    r = c.get("/v1/log/tile/entries/000", auth=auditor, headers={"accept-encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"  # httpx has decoded it
    assert "private" in r.headers["cache-control"] and "public" not in r.headers["cache-control"]
    got, pos = [], 0
    while pos < len(r.content):
        (n,) = struct.unpack(">H", r.content[pos : pos + 2])
        got.append(r.content[pos + 2 : pos + 2 + n])
        pos += 2 + n
    assert got == entries[:256]
    tile = c.get("/v1/log/tile/0/000").content
    assert b"".join(_leaf(e) for e in got) == tile
    plain = c.get("/v1/log/tile/entries/000", auth=auditor, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == r.content
    assert gzip.decompress(gzip.compress(plain.content)) == r.content


def test_an_entry_of_64_kib_is_refused_with_its_index_never_dropped(hub, tmp_path):
    """tlog-tiles "Log entries": uint16 length prefixes cannot say 70,000 bytes. The bundle
    holding such an entry is refused (422, TileEntryTooLargeError naming the entry), the
    static export raises before writing anything; the hash tiles are still served."""
    c, parties, data = hub
    before = TransparencyLog.open(data / "log").size
    entries = _grow(data, 10, big=3)
    assert len(entries[before + 3]) == 70_000 + len(b'{"n":3,"pad":""}')
    r = c.get(
        f"/v1/log/tile/entries/000.p/{len(entries)}", auth=HttpSigAuth(parties["auditor"].key)
    )
    assert r.status_code == 422
    assert r.json()["error"] == "TileEntryTooLargeError" and str(before + 3) in r.json()["detail"]
    assert c.get(f"/v1/log/tile/0/000.p/{len(entries)}").status_code == 200
    out = tmp_path / "export"
    with TransparencyLog.open(data / "log") as log, pytest.raises(TileEntryTooLargeError) as e:
        export_tiles(log, out)
    assert e.value.index == before + 3 and e.value.length == len(entries[before + 3])
    assert not out.exists()  # nothing half written


def test_export_writes_exactly_what_the_http_route_serves(hub, tmp_path):
    """The static export and the HTTP tiles are the same bytes (one implementation)."""
    c, parties, data = hub
    _grow(data, 300)
    with TransparencyLog.open(data / "log") as log:
        export_tiles(log, tmp_path / "t")
    auditor = HttpSigAuth(parties["auditor"].key)
    files = [p for p in (tmp_path / "t" / "tile").rglob("*") if p.is_file()]
    assert len(files) >= 4
    for p in files:
        rel = p.relative_to(tmp_path / "t").as_posix()
        r = c.get("/v1/log/" + rel, auth=auditor, headers={"accept-encoding": "identity"})
        assert r.status_code == 200 and r.content == p.read_bytes(), rel


# --- tlog-witness: the monitoring route, the witness's own key --------------------------------
def test_monitor_route_serves_the_cosigned_checkpoint(hub, tmp_path):
    """tlog-witness "Monitor Retrieval Mechanism": GET <prefix>/<hex SHA-256 of the origin,
    lowercase>/checkpoint: the checkpoint with the log signature the witness verified and
    the cosignature it returned; 404 for a log it never cosigned."""
    c, parties, data = hub
    log = _holder_log(tmp_path, parties)
    h = hashlib.sha256(b"site-a").hexdigest()
    assert c.get(f"/v1/log/{h}/checkpoint").status_code == 404  # never cosigned yet
    line = witness_log(log, _post(c))
    r = c.get(f"/v1/log/{h}/checkpoint")  # unsigned: public
    assert r.status_code == 200
    note = parse_note(r.content)
    assert note.text == parse_note(log.checkpoint()).text
    assert line in r.content  # the very cosignature add-checkpoint returned
    wv = _hub_witness(data)
    cos = [s for s in note.signatures if (s.name, s.key_id) == (wv.name, wv.key_id)]
    assert len(cos) == 1 and wv.verify(note.text, cos[0].sig)
    assert any(log.verifier.verify(note.text, s.sig) for s in note.signatures
               if s.key_id == log.verifier.key_id)  # fmt: skip
    assert c.get(f"/v1/log/{h.upper()}/checkpoint").status_code in (401, 404)
    other = hashlib.sha256(b"site-b").hexdigest()
    assert c.get(f"/v1/log/{other}/checkpoint").status_code == 404


def test_the_hub_cosigns_with_a_witness_key_that_is_not_its_log_key(hub, tmp_path):
    """signed-note "Verifier keys": the same key SHOULD NOT be reused for different signature
    types; tlog-cosignature: one key per cosigner. The hub's checkpoints verify with its
    log key; its cosignatures only with DATA/witness.vkey, which its identity endorses at
    GET /v1/log/witness-key (public)."""
    c, parties, data = hub
    hub_key = load_private_key(data / "hub.key")
    wv = _hub_witness(data)
    assert wv.public_key != raw_public(hub_key) and wv.alg == 0x04
    log = _holder_log(tmp_path, parties)
    line = witness_log(log, _post(c))
    body = parse_note(log.checkpoint()).text
    sig = base64.b64decode(line.split(b" ")[2])
    assert sig[:4] == wv.key_id and wv.verify(body, sig[4:])
    assert not witness_verifier(wv.name, raw_public(hub_key)).verify(body, sig[4:])
    r = c.get("/v1/log/witness-key")
    assert r.status_code == 200
    e = check_endorsement(r.content, wv.name, raw_public(hub_key))
    assert e.witness == wv and e.log is not None and e.log.public_key == raw_public(hub_key)
    # the endorsement is the identity's signature: another identity, or one byte changed, fails
    with pytest.raises(WitnessKeyError):
        check_endorsement(r.content, wv.name, raw_public(parties["holder"].key))
    with pytest.raises(WitnessKeyError):
        check_endorsement(
            r.content.replace(b"witness ", b"witness  "), wv.name, raw_public(hub_key)
        )


def test_earlier_cosignatures_by_the_identity_key_still_verify(tmp_path):
    """A hub from before witness keys cosigned with its identity key. On its next start it
    makes DATA/witness.key; the auditor lists both keys under the hub's name: the old
    cosignature still verifies, the new one too, and the quorum counts one witness."""
    parties, trust = hub_parties(tmp_path / "keys")
    data = tmp_path / "hub"
    with TestClient(create_app(data, trust=trust)) as c:
        pass  # first start: hub.key, log
    hub_key = load_private_key(data / "hub.key")
    (data / "witness.key").unlink()
    (data / "witness.vkey").unlink()
    log = _holder_log(tmp_path, parties)
    # what the old hub did: cosign with its identity key
    old = Witness(tmp_path / "old-w", "dataspace-hub", hub_key, [log.verifier])
    witness_log(log, lambda b: (200, old.add_checkpoint(b)))
    old_size = log.size
    with TestClient(create_app(data, trust=trust)) as c:
        assert (data / "witness.key").is_file()
        log.append(make_event("dataset.enrolled", parties["holder"].key, "site-a", dataset_id="d"))
        witness_log(log, _post(c), known_size=0)
    new = _hub_witness(data)
    legacy = witness_verifier("dataspace-hub", raw_public(hub_key))
    kept = {checkpoint_of_note(n).size: n for n in log.cosigned_checkpoints()}
    for size, key in ((old_size, legacy), (log.size, new)):
        rep = verify_source(
            log,
            TrustedKeys(logs=[log.verifier], witnesses=[legacy, new]),
            checkpoint=kept[size],
            quorum=1,
        )
        assert rep.ok and rep.witnesses == ["dataspace-hub"], (size, rep.violations)
        only_other = [legacy, new]
        only_other.remove(key)
        rep = verify_source(
            log,
            TrustedKeys(logs=[log.verifier], witnesses=only_other),
            checkpoint=kept[size],
            quorum=1,
        )
        assert not rep.ok  # each cosignature is by the key the auditor expects for it


# --- adversarial ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "tile/0/x000/000",  # leading x000 group: not the canonical form
        "tile/0/0000",  # 4 digits
        "tile/0/00",  # 2 digits
        "tile/0/x1/000",  # x group of 1 digit
        "tile/0/001/000",  # an inner group without its x
        "tile/00/000",  # level with a leading zero
        "tile/64/000",  # level over 63
        "tile/-1/000",
        "tile/0/000.p/0",  # width 0
        "tile/0/000.p/256",  # width over 255
        "tile/0/000.p/007",  # width with leading zeros
        "tile/0/000.p/",
        "tile/0/000.p/5/",
        "tile/0/../entries/000",
        "tile/0/%2e%2e/000",
        "tile/entries/x000/x000/x000/x000/x000/x000/x000/001",  # 8 groups
        "tile/0/" + "x999/" * 50 + "999",
        "tile/0/000.P/5",
        "tile/0/000 ",
    ],
)
def test_malformed_tile_paths_are_refused(hub, path):
    """tlog-tiles "Merkle Tree": L 0..63 and W 1..255 without leading zeros, N in zero-padded
    3-digit elements, x on all but the last. Anything else: 400 for a signed reader (401
    unsigned when it is not even shaped like a public tile); never a tile, never a 5xx."""
    c, parties, data = hub
    _grow(data, 300)
    auditor = HttpSigAuth(parties["auditor"].key)
    for auth in (None, auditor):
        r = c.get("/v1/log/" + path, auth=auth)
        if ".." in path and auth is not None:
            continue  # sent as tile/entries/000 (httpx resolved the dot segments): a real bundle
        assert r.status_code in (400, 401, 404), (path, auth, r.status_code, r.text)
        assert r.headers.get("content-type") != "application/octet-stream"
    # the router's parser refuses it whatever a client normalizes; dot segments and
    # entry bundles are never public
    if ".." in path or "%2e" in path or "entries" in path:
        assert not public_log("/v1/log/" + path)
    with pytest.raises(TilePathError):
        parse_tile_path(path)
    if "%2e" not in path and ".." not in path:  # httpx resolves dot segments itself
        assert c.get("/v1/log/" + path, auth=auditor).status_code == 400, path


def test_tile_requests_racing_appends_always_match_their_checkpoint(hub):
    """A client fetching a checkpoint and then its tiles while the log grows: every tile it
    gets still rebuilds that checkpoint's root (tiles of a smaller tree stay servable)."""
    c, _, data = hub
    _grow(data, 250)
    stop = threading.Event()
    key = load_private_key(data / "hub.key")

    def appender() -> None:
        with TransparencyLog.open(data / "log", key=key) as log:
            i = 0
            while not stop.is_set():
                log.append_many([b'{"race":%d}' % (i + k) for k in range(7)])
                i += 7

    t = threading.Thread(target=appender)
    t.start()
    try:
        checked = set()
        for _ in range(25):
            cp = checkpoint_of_note(c.get("/v1/log/checkpoint").content)
            leaves = []
            for n in range(cp.size // 256 + 1):
                w = min(256, cp.size - n * 256)
                if w == 0:
                    break
                r = c.get(f"/v1/log/tile/0/{_spec_tile_path(n)}" + ("" if w == 256 else f".p/{w}"))
                assert r.status_code == 200, r.text
                leaves += [r.content[i : i + 32] for i in range(0, len(r.content), 32)]
            assert _mth(leaves) == cp.root, cp.size
            checked.add(cp.size)
    finally:
        stop.set()
        t.join()
    assert len(checked) > 3  # the log did grow under the reader


def test_a_checkpoint_whose_origin_is_not_the_logs(hub, tmp_path):
    """tlog-witness: the witness verifies the signature against the keys it trusts for the
    checkpoint's origin. A holder's key signing under another origin: 404 (unknown origin);
    another key under the holder's origin: 403; the log keeps no cosignature of a
    checkpoint that is not one of its own trees."""
    c, parties, _ = hub
    evil = TransparencyLog.create(tmp_path / "evil", "evil.example/log", parties["holder"].key)
    evil.append(b"x")
    r = c.post("/v1/log/add-checkpoint", content=request_body(0, [], evil.checkpoint()))
    assert r.status_code == 404
    forged = TransparencyLog.create(tmp_path / "forged", "site-a", Ed25519PrivateKey.generate())
    forged.append(b"x")
    r = c.post("/v1/log/add-checkpoint", content=request_body(0, [], forged.checkpoint()))
    assert r.status_code == 403
    log = _holder_log(tmp_path, parties)
    line = witness_log(log, _post(c))
    from dataspace.audit.storage import LogError

    with pytest.raises(LogError):
        log.keep_cosignature(parse_note(evil.checkpoint()).text, line)


def test_a_witness_never_cosigns_with_a_log_key(tmp_path):
    """tlog-cosignature / signed-note: a witness asked to cosign with its service's log key
    refuses to start (WitnessKeyError); a log signing with the witness's own key is never
    trusted (its checkpoints: 404 unknown origin, never a cosignature)."""
    log_key = Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp_path / "log", "site.example/log", log_key)
    with pytest.raises(WitnessKeyError):
        Witness(tmp_path / "w", "site.example", log_key, [], log_keys=[raw_public(log_key)])
    w = Witness(tmp_path / "w2", "site.example", log_key, [log.verifier])
    assert log.verifier.name not in w.logs
    from dataspace.audit.witness import WitnessError

    with pytest.raises(WitnessError) as e:
        w.add_checkpoint(request_body(0, [], log.checkpoint()))
    assert e.value.status == 404


def test_huge_bodies_are_refused_before_they_are_parsed(hub):
    """A client sending a huge add-checkpoint body: 413 over the services' limit; under it,
    garbage is a 400 (tlog-witness: malformed), never a 5xx."""
    c, _, _ = hub
    r = c.post("/v1/log/add-checkpoint", content=b"old 0\n" + b"A" * (300 * 1024))
    assert r.status_code == 413
    r = c.post("/v1/log/add-checkpoint", content=b"old 0\n" + b"QUFB\n" * 50_000 + b"\nx\n")
    assert r.status_code == 400
    r = c.post("/v1/log/add-checkpoint", content=b"old 0\n\n" + b"x" * 200_000)
    assert r.status_code in (400, 404)


def test_a_log_with_the_old_origin_opens_verifies_and_serves(tmp_path):
    """Existing logs keep their origin (a plain name, from before URL-style origins): the
    log opens, verifies under its vkey, and a service over it serves its tiles."""
    from fastapi import FastAPI

    from dataspace.auth.log_api import log_router

    key = Ed25519PrivateKey.generate()
    es = [make_event("dataset.enrolled", key, "site-a", dataset_id=d) for d in "ab"]
    TransparencyLog.create(tmp_path / "log", "site-a", key).append_many(es)
    log = TransparencyLog.open(tmp_path / "log", key=key)
    assert log.origin == "site-a"
    rep = verify_source(log, TrustedKeys(logs=[log.verifier]), allow_unanchored=True)
    assert rep.ok, rep.violations
    app = FastAPI()
    app.include_router(log_router(log), prefix="/v1/log")
    c = TestClient(app)
    assert checkpoint_of_note(c.get("/v1/log/checkpoint").content).origin == "site-a"
    assert c.get("/v1/log/tile/0/000.p/2").content == _leaf(es[0]) + _leaf(es[1])
    Ed25519PublicKey.from_public_bytes(log.public_key)  # a real Ed25519 key
