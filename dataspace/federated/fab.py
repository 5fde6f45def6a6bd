"""App bundles (FAB) and the signatures a holder's SuperNode accepts.

In Flower 1.42 a SuperNode started with ``--trusted-entities FILE`` (YAML:
``public_key_id: "ssh-ed25519 AAAA..."``) runs a FAB only if its
verification records hold an Ed25519 signature, by one of those keys, over
``uint64_be(signed_at) || SHA-256(fab)`` (``create_message_to_sign``), and
the SuperLink marked the FAB ``valid_license``. The SuperLink fills these
records only for apps fetched from Flower Hub (``flwr run @publisher/app``);
a FAB submitted from a local directory carries none, so such a SuperNode
refuses every locally built FAB: an unsigned bundle never runs at a site that
names its trusted keys. Tested in tests/federated/test_deploy.py.

This module makes and checks signatures in exactly Flower's format, so a
holder can (a) vet and sign the connector app's FAB with its own key
(:func:`sign_fab`), (b) write the keys it accepts (:func:`write_trusted_entities`),
and (c) check a bundle offline (:func:`verify_fab`, which calls Flower's own
verifier). Getting the records to the SuperNode needs the SuperLink to carry
them (Flower Hub today); until the hub serves them, the deployment engine runs
the connector's installed apps (the FAB only names them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.errors import RefusedError


class UntrustedBundleError(RefusedError):
    """A bundle whose app is not the party's own installed code: it never runs."""


def bundle_component(fab_content: bytes, kind: str, own: frozenset[str]) -> str:
    """The bundle's ``[tool.flwr.app.components] kind`` (clientapp / serverapp), if in ``own``.

    The warm workers run their own installed apps and use this to refuse a bundle
    that names any other code (see the module docstring for why signatures alone
    cannot do it for local bundles in Flower 1.42).
    """
    from flwr.common.config import get_fab_config

    try:
        components = get_fab_config(fab_content)["tool"]["flwr"]["app"]["components"]
        component = str(components.get(kind, ""))
    except Exception as e:  # not a FAB, no pyproject, no components: not ours either
        raise UntrustedBundleError(f"the app bundle cannot be read: {e}") from e
    if component not in own:
        raise UntrustedBundleError(f"the app bundle's {kind} {component!r} is not our own code")
    return component


@dataclass(frozen=True)
class FabSignature:
    public_key_id: str
    signature: str  # base64url, unpadded (Flower's encoding)
    signed_at: int

    def record(self) -> dict[str, str]:
        """The FAB verification entry as the SuperLink stores it."""
        return {
            self.public_key_id: json.dumps(
                {"signature": self.signature, "signed_at": self.signed_at}
            )
        }


def build_fab(app_dir: Path) -> bytes:
    """The FAB of ``app_dir``, built by Flower's own builder (what ``flwr build`` writes)."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(Path(app_dir))


def openssh_public(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def sign_fab(fab: bytes, key: Ed25519PrivateKey, public_key_id: str, signed_at: int | None = None):
    """Sign a FAB in Flower's format: Ed25519 over ``uint64_be(t) || SHA-256(fab)``."""
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

    t = int(signed_at if signed_at is not None else time.time())
    sig = key.sign(create_message_to_sign(hashlib.sha256(fab).digest(), t))
    return FabSignature(public_key_id, base64.urlsafe_b64encode(sig).rstrip(b"=").decode(), t)


def write_trusted_entities(path: Path, keys: dict[str, str]) -> Path:
    """The ``--trusted-entities`` YAML: ``{public_key_id: "ssh-ed25519 ..."}``."""
    path.write_text("".join(f'"{k}": "{v}"\n' for k, v in keys.items()))
    return path


def verify_fab(fab: bytes, signatures: list[FabSignature], trusted: dict[str, str]) -> bool:
    """What a SuperNode with ``--trusted-entities`` decides (Flower's own verifier)."""
    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    records: dict[str, str] = {"valid_license": "Valid"}
    for s in signatures:
        records.update(s.record())
    return bool(_verify_fab(Fab(hashlib.sha256(fab).hexdigest(), fab, records), trusted))
