"""A recording TCP proxy on 127.0.0.1: every byte each side sends, kept per direction.

Put in front of a service (the hub, a connector, a SuperLink) so that a test
sees exactly what went over the wire, whatever the protocol (HTTP/1.1, gRPC).
Threads, not asyncio: it must not share an event loop with what it records.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Capture:
    """Bytes seen, by direction: ``upstream`` (client to service), ``downstream``."""

    upstream: list[bytes] = field(default_factory=list)
    downstream: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, direction: str, chunk: bytes) -> None:
        with self.lock:
            getattr(self, direction).append(chunk)

    def joined(self) -> tuple[bytes, bytes]:
        with self.lock:
            return b"".join(self.upstream), b"".join(self.downstream)


class RecordingProxy:
    """``127.0.0.1:port`` forwarding to ``target``; ``capture`` holds the bytes."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.capture = Capture()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=30)
            except OSError:
                client.close()
                continue
            for src, dst, d in ((client, upstream, "upstream"), (upstream, client, "downstream")):
                threading.Thread(target=self._pump, args=(src, dst, d), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while chunk := src.recv(65536):
                self.capture.add(direction, chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
