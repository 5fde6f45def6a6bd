"""Listening sockets for the services: bound before an app starts, so a port in use is
a clear error and a non-zero exit, not a traceback from inside uvicorn or Flower."""

from __future__ import annotations

import socket

from dataspace.errors import DataspaceError


class ListenError(DataspaceError):
    """A service that cannot listen where it was told (port in use, bad address)."""

    exit_code = 2


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, inheritable by a child process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = e.strerror or e
        raise ListenError(f"cannot listen on {host}:{port}: {why} (port in use?)") from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (tests, the demo, local runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
