"""What an auditor trusts: log keys, witness keys and actors (``--trusted-keys``).

The trusted-keys file holds one item per line; ``#`` starts a comment::

    NAME+HEX+BASE64             a vkey: type 0x01 is a log key, type 0x04 a witness key
    log NAME+HEX+BASE64|PATH    a log key (PATH: an identity .pub file, or a .vkey file;
                                an identity is trusted for its name, the origin of logs
                                made before URL origins, and for the origins derived
                                from its key: dataspace.audit.witnesskey.log_origin)
    witness NAME+HEX+BASE64|PATH  a witness key (an identity .pub gives its 0x04 key)
    actor PATH | PATH.pub       an identity file {"name","role","public_key"} of an actor
    {"name":..,"public_key":..}  an inline identity (an actor)

Vkeys are C2SP signed-note verifier keys (:func:`dataspace.audit.note.parse_vkey`);
key type 0x04 is C2SP tlog-cosignature's. Relative paths are relative to the file.
A log's key is also trusted as an actor (a site signs its own events). When no
actor is listed, any actor whose signature verifies is accepted (the actors are
then reported, not judged).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dataspace.audit.note import ALG_COSIGNATURE_V1, ALG_ED25519, NoteError, Verifier, parse_vkey
from dataspace.audit.witnesskey import ORIGIN_KINDS, log_origin
from dataspace.errors import DataspaceError

#: NAME+HEX(keyID)+BASE64(type || key): a vkey, as opposed to a path
VKEY_RE = re.compile(r"[^+\s]+\+[0-9a-fA-F]{8}\+[A-Za-z0-9+/]+=*")


class TrustedKeysError(DataspaceError):
    """A trusted-keys file that cannot be read."""


@dataclass
class TrustedKeys:
    """The keys an audit trusts: log keys (0x01), witness keys (0x04), actors by raw key."""

    logs: list[Verifier] = field(default_factory=list)
    witnesses: list[Verifier] = field(default_factory=list)
    actors: dict[bytes, str] = field(default_factory=dict)

    def actor_keys(self) -> frozenset[bytes] | None:
        """The raw keys an entry's actor must have, or None (any actor) when none is listed."""
        if not self.actors:
            return None
        return frozenset(self.actors) | {v.public_key for v in self.logs}


def _identity(obj: dict, where: str) -> tuple[str, bytes]:
    try:
        raw = base64.b64decode(obj["public_key"], validate=True)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)}-byte key")
        return str(obj["name"]), raw
    except (KeyError, ValueError, TypeError) as e:
        raise TrustedKeysError(f"{where}: not an identity {{name, public_key}}: {e}") from e


def _read_identity(path: Path) -> tuple[str, bytes]:
    try:
        return _identity(json.loads(path.read_text()), str(path))
    except (OSError, json.JSONDecodeError) as e:
        raise TrustedKeysError(f"cannot read identity {path}: {e}") from e


def _key_item(item: str, alg: int, base: Path, where: str) -> Verifier:
    """A ``log`` or ``witness`` item: a vkey of type ``alg``, a .vkey file or an identity."""
    if VKEY_RE.fullmatch(item):
        try:
            v = parse_vkey(item)
        except NoteError as e:
            raise TrustedKeysError(f"{where}: {e}") from e
        if v.alg != alg:
            raise TrustedKeysError(f"{where}: key type {v.alg:#04x}, expected {alg:#04x}")
        return v
    path = Path(base, item)
    if path.suffix == ".vkey":
        try:
            return _key_item(path.read_text().strip(), alg, base, where)
        except OSError as e:
            raise TrustedKeysError(f"{where}: cannot read {path}: {e}") from e
    name, raw = _read_identity(path)
    return Verifier(name, raw, alg)


def parse_trusted_keys(text: str, base: Path = Path()) -> TrustedKeys:
    """The keys a trusted-keys file lists (module docstring); paths relative to ``base``."""
    tk = TrustedKeys()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("{") else line
        line = line.strip()
        if not line:
            continue
        where = f"trusted keys line {n}"
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrustedKeysError(f"{where}: not a JSON identity ({e})") from e
            name, raw = _identity(obj, where)
            tk.actors[raw] = name
        elif word == "log":
            v = _key_item(rest, ALG_ED25519, base, where)
            tk.logs.append(v)
            if not VKEY_RE.fullmatch(rest) and Path(base, rest).suffix != ".vkey":
                # an identity: its key under the URL origins derived from it as well
                tk.logs += [
                    Verifier(log_origin(k, v.public_key), v.public_key) for k in ORIGIN_KINDS
                ]
        elif word == "witness":
            tk.witnesses.append(_key_item(rest, ALG_COSIGNATURE_V1, base, where))
        elif word == "actor":
            name, raw = _read_identity(Path(base, rest))
            tk.actors[raw] = name
        elif VKEY_RE.fullmatch(line):
            try:
                v = parse_vkey(line)
            except NoteError as e:
                raise TrustedKeysError(f"{where}: {e}") from e
            (tk.logs if v.alg == ALG_ED25519 else tk.witnesses).append(v)
        else:
            path = Path(base, line)
            if path.suffix == ".vkey":
                try:
                    included = path.read_text()
                except OSError as e:
                    raise TrustedKeysError(f"{where}: cannot read {path}: {e}") from e
                sub = parse_trusted_keys(included, path.parent)
                tk.logs += sub.logs
                tk.witnesses += sub.witnesses
            else:
                name, raw = _read_identity(path)
                tk.actors[raw] = name
    return tk


def load_trusted_keys(path: Path | str) -> TrustedKeys:
    """Read a trusted-keys file; raises :class:`TrustedKeysError` naming what is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TrustedKeysError(f"cannot read trusted keys {path}: {e}") from e
    return parse_trusted_keys(text, path.parent)
