"""Key rotation: a new key signed by the old one; a site's rotation is logged."""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from dataspace.policy.contracts import OfferRequest, negotiate
from dataspace.policy.terms import ContractTerms
from dataspace.site.identity import (
    IdentityKeyError,
    load_identity,
    load_private_key,
    load_rotations,
    new_identity,
    public_bytes,
    rotate_identity,
    rotations_path,
)
from dataspace.site.log import open_site_log
from dataspace.site.rotation import rotate_site_key
from tests.policy.conftest import NOW, World


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_rotate_identity_file(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    old = new_identity(path, "alice", "consumer")
    old_key = load_private_key(path)
    r = rotate_identity(path)
    new = load_identity(path)
    assert (new.name, new.role) == ("alice", "consumer") and new.public_key != old.public_key
    assert public_bytes(load_private_key(path)) == new.public_key
    assert mode(path) == 0o600
    archive = Path(f"{path}.old-{old.public_key[:4].hex()}")
    assert mode(archive) == 0o600 and public_bytes(load_private_key(archive)) == old.public_key
    assert public_bytes(old_key) == old.public_key
    assert (r.old_key, r.new_key) == (old.key_b64, new.key_b64)
    r.verify()
    assert load_rotations(path) == [r]
    rotate_identity(path)  # a second rotation chains from the first's new key
    rs = load_rotations(path)
    assert len(rs) == 2 and rs[1].old_key == rs[0].new_key


def test_forged_rotation_does_not_verify(tmp_path: Path) -> None:
    path = tmp_path / "k"
    new_identity(path, "op", "operator")
    r = rotate_identity(path)
    other = new_identity(tmp_path / "mallory", "mallory", "consumer")
    forged = replace(r, new_key=other.key_b64)  # swap in another key, keep the signatures
    with pytest.raises(IdentityKeyError, match="does not verify"):
        forged.verify()
    lines = rotations_path(path).read_text().splitlines()
    obj = json.loads(lines[0])
    obj["old_signature"] = base64.b64encode(b"\0" * 64).decode()
    rotations_path(path).write_text(json.dumps(obj) + "\n")
    with pytest.raises(IdentityKeyError, match="old key's signature"):
        load_rotations(path)


def test_rotate_site_key_is_logged_and_the_log_keeps_working(world: World) -> None:
    site = world.site
    old = site.identity
    vkey_before = site.vkey_path.read_text()
    r = rotate_site_key(site)
    assert site.identity.key_b64 == r.new_key != old.key_b64
    (ev,) = world.events("key.rotated")
    assert ev.actor_key_b64 == old.key_b64  # signed by the old key
    assert ev.fields["new_key"] == r.new_key and ev.fields["new_name"] == old.name
    # the log keeps its own key (witnesses pin it); new events carry the new identity
    world.publish()
    (pub,) = world.events("policy.published")
    assert pub.actor_key_b64 == r.new_key
    assert site.vkey_path.read_text() == vkey_before
    log = open_site_log(site, writable=False)
    assert log.size == len(world.events())
    # contracts are now signed by the new holder key
    c = negotiate(
        site,
        OfferRequest(
            dataset_id=world.dataset_id,
            consumer=world.alice,
            terms=ContractTerms(
                purpose="research",
                epsilon=1.0,
                rounds=1,
                until=NOW + timedelta(days=1),
                template="mlp",
            ),
        ),
        world.key(),
        now=NOW,
    )
    assert c.terms.holder == r.new_key


def test_new_identity_creates_missing_folders(tmp_path):
    from dataspace.site.identity import load_identity, new_identity

    ident = new_identity(tmp_path / "keys" / "deep" / "bob.key", name="bob", role="consumer")
    assert load_identity(tmp_path / "keys" / "deep" / "bob.key") == ident
    assert (tmp_path / "keys" / "deep" / "bob.key").stat().st_mode & 0o777 == 0o600
