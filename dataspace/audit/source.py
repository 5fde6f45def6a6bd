"""Where an auditor reads a log from: a site folder, a log folder, a bundle, or a URL.

Every source answers the same questions: the latest signed checkpoint (with its
cosignatures), its entries by range, and RFC 9162 proofs. Remote sources speak
the HTTP API of :mod:`dataspace.auth.log_api` (stdlib ``urllib``; the audit package
depends on nothing else).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from dataspace.audit.bundle import Bundle
from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.log import TransparencyLog
from dataspace.audit.merkle import MemoryTree, ProofError, leaf_hash
from dataspace.audit.storage import META, LogError

#: entries per HTTP request (the server caps a range at this many)
PAGE = 1000


class LogSource(Protocol):
    """What an auditor reads of a log, wherever it lies (module docstring)."""

    description: str

    def checkpoint(self) -> bytes: ...
    def cosignatures(self) -> bytes: ...
    def size(self) -> int: ...
    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, list[bytes]]: ...
    def consistency_proof(self, old: int, new: int) -> list[bytes]: ...
    def witnessing(self) -> dict[str, Any] | None: ...


class FolderSource:
    """A log folder (or SITE/log), opened read-only; or a log already open (the hub's)."""

    def __init__(self, directory: str | os.PathLike[str] | TransparencyLog) -> None:
        if isinstance(directory, str | os.PathLike):
            self.log = TransparencyLog.open(directory)
        else:
            self.log = directory
        self.description = f"log folder {self.log.directory}"

    def checkpoint(self) -> bytes:
        # the latest fully cosigned checkpoint (the latest one when no witness answered yet)
        return self.log.witnessed_checkpoint()

    def cosignatures(self) -> bytes:
        return b""  # they are signature lines of the checkpoint note itself

    def size(self) -> int:
        return self.log.size

    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return self.log.iter_entries(start, end)

    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, list[bytes]]:
        proof = self.log.inclusion_proof(index, size)
        return self.log.leaf_hash(index), proof

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        return self.log.consistency_proof(old, new)

    def witnessing(self) -> dict[str, Any] | None:
        return self.log.witnessing_status()


class BundleSource:
    """An exported bundle; proofs come from a tree built in memory on first use."""

    def __init__(self, directory: Path) -> None:
        self.bundle = Bundle.open(directory)
        self.description = f"bundle {directory}"
        self._tree: MemoryTree | None = None

    def checkpoint(self) -> bytes:
        return self.bundle.checkpoint()

    def cosignatures(self) -> bytes:
        return self.bundle.cosignatures()

    def size(self) -> int:
        return checkpoint_of_note(self.checkpoint()).size

    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        size = self.size()
        end = size if end is None else end
        if not 0 <= start <= end <= size:
            raise LogError(f"entries [{start}, {end}) are not in a bundle of size {size}")
        return self.bundle.iter_entries(start, end)

    def tree(self) -> MemoryTree:
        if self._tree is None:
            self._tree = MemoryTree([leaf_hash(e) for e in self.bundle.iter_entries()])
        return self._tree

    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, list[bytes]]:
        t = self.tree()
        proof = t.inclusion_proof(index, size)
        return t.node(0, index), proof

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        return self.tree().consistency_proof(old, new)

    def witnessing(self) -> dict[str, Any] | None:
        return None  # a bundle is one checkpoint: no witness set to report


#: signs one request: (method, full URL, body) -> headers to send. The audit
#: package knows no identities of ours, so the caller (the CLI) supplies it.
RequestSigner = Callable[[str, str, bytes], Mapping[str, str]]


class RemoteSource:
    """A log served over HTTP by :func:`dataspace.auth.log_api.log_router`.

    ``url`` is the log's base URL, or a hub's or connector's root URL, whose
    log lives under ``/v1/log``. The services serve entries and proofs only to
    signed requests of holders, auditors and operators (the log names
    consumers and contracts), so ``sign`` adds the caller's signature headers.
    """

    def __init__(self, url: str, timeout: float = 30.0, sign: RequestSigner | None = None) -> None:
        base = url.rstrip("/")
        if urllib.parse.urlsplit(base).path in ("", "/"):
            base += "/v1/log"
        self.base = base
        self.timeout = timeout
        self.sign = sign
        self.description = f"log at {self.base}"
        self._note: bytes | None = None

    def _get(self, path: str, **params: int) -> bytes:
        q = ("?" + urllib.parse.urlencode(params)) if params else ""
        url = self.base + path + q
        headers = dict(self.sign("GET", url, b"")) if self.sign else {}
        try:
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            if e.code == 404:
                raise LogError(f"{self.base}{path}: not found: {detail}") from e
            if e.code in (401, 403):
                hint = "" if self.sign else " (sign the requests: --key or $DATASPACE_KEY)"
                raise LogError(f"{url}: HTTP {e.code}: {detail}{hint}") from e
            raise ProofError(f"{url}: HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise LogError(f"cannot reach {self.base}: {e}") from e

    def checkpoint(self) -> bytes:
        if self._note is None:  # one checkpoint per source: every later read agrees with it
            self._note = self._get("/checkpoint", witnessed=1)
        return self._note

    def cosignatures(self) -> bytes:
        return b""

    def size(self) -> int:
        return checkpoint_of_note(self.checkpoint()).size

    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = self.size() if end is None else end
        i = start
        while i < end:
            body = self._get("/entries", start=i, end=min(end, i + PAGE))
            lines = body.split(b"\n")[:-1] if body.endswith(b"\n") else body.split(b"\n")
            if not lines or lines == [b""]:
                raise LogError(f"{self.base}: no entries returned from {i}")
            yield from lines
            i += len(lines)

    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, list[bytes]]:
        obj = json.loads(self._get("/proof/inclusion", index=index, size=size))
        return bytes.fromhex(obj["leaf_hash"]), [bytes.fromhex(h) for h in obj["hashes"]]

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        obj = json.loads(self._get("/proof/consistency", **{"from": old, "size": new}))
        return [bytes.fromhex(h) for h in obj["hashes"]]

    def witnessing(self) -> dict[str, Any] | None:
        """``GET /witnesses``; None from a server without it (or refusing it)."""
        try:
            obj = json.loads(self._get("/witnesses"))
        except (LogError, ProofError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None


def open_source(spec: str | os.PathLike[str], sign: RequestSigner | None = None) -> LogSource:
    """SOURCE: an http(s) URL, a site folder (uses SITE/log), a log folder, or a bundle.

    ``sign`` signs the requests to a URL (see :class:`RemoteSource`).
    """
    s = str(spec)
    if s.startswith(("http://", "https://")):
        return RemoteSource(s, sign=sign)
    p = Path(s)
    if (p / META).is_file():
        return FolderSource(p)
    if (p / "log" / META).is_file():
        return FolderSource(p / "log")
    if (p / "entries.jsonl").is_file():
        return BundleSource(p)
    raise LogError(f"{p} is not a site folder, a log folder, an audit bundle or a URL")
