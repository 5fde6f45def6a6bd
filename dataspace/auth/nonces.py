"""Nonce stores: remember each (key, nonce) until its request can no longer be fresh.

A signed request is accepted only while its ``created`` lies within the window
(RFC 9421 section 7.2.2), so a nonce needs remembering only until
``created + window``; after that the timestamp check alone refuses a replay.
The store therefore stays small: at most the nonces of one window.

:class:`FileNonceStore` also appends each nonce to a file (one line
``EXPIRES KEYID NONCE``) before the request is accepted, so a restarted
service (after a crash or kill -9) still refuses a replay of a request it
accepted a moment ago. The line is written with ``os.write`` on an
``O_APPEND`` descriptor, which survives the death of the process; it is not
fsynced (a power loss could forget the nonces of the last few seconds, a
replay window no wider than the clock window itself). The file is compacted
when it holds many expired lines.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class MemoryNonceStore:
    """Thread-safe in-memory store (tests, clients, short-lived services)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
        self._next_sweep = now + 10.0

    def check_and_add(self, key_id: str, nonce: str, expires: float, now: float) -> bool:
        with self._lock:
            self._sweep(now)
            k = (key_id, nonce)
            if k in self._seen:
                return False
            self._seen[k] = expires
            self._persist(key_id, nonce, expires)
            return True

    def _persist(self, key_id: str, nonce: str, expires: float) -> None:
        """Hook for durable stores."""

    def __len__(self) -> int:
        return len(self._seen)


class FileNonceStore(MemoryNonceStore):
    """In memory, and appended to ``path`` so a restart keeps refusing replays."""

    #: compact the file once it has this many more lines than live nonces
    COMPACT_SLACK = 50_000

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self._lines = 0
        if self.path.exists():
            for line in self.path.read_text(errors="replace").splitlines():
                parts = line.split(" ")
                if len(parts) != 3:
                    continue  # a torn last line after a crash: skip it
                try:
                    exp = float(parts[0])
                except ValueError:
                    continue
                if exp > now:
                    self._seen[(parts[1], parts[2])] = exp
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for (key_id, nonce), exp in self._seen.items():
                f.write(f"{exp:.0f} {key_id} {nonce}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._lines = len(self._seen)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def _persist(self, key_id: str, nonce: str, expires: float) -> None:
        os.write(self._fd, f"{expires:.0f} {key_id} {nonce}\n".encode())
        self._lines += 1
        if self._lines > len(self._seen) + self.COMPACT_SLACK:
            os.close(self._fd)
            self._rewrite()

    def close(self) -> None:
        os.close(self._fd)
