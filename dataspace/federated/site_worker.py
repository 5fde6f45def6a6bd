"""A site's long-lived training worker, and the lean ClientApp that forwards to it.

Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message; with
torch and Opacus imported, data loaded and the privacy plan solved each time,
a round cost many times its computation. The connector therefore runs, next
to each SuperNode, one warm worker process per site (holder's code, holder's
machine) that imports everything once, keeps the site's frames and plans in
memory, and executes :data:`dataspace.federated.client_app.app`. The ClientApp
Flower starts (``dataspace.federated.site_worker:app``) imports only
``flwr.app`` and hands the message and context to the worker over a Unix
socket created with mode 0600 in the holder's temporary directory, so only the
holder's own processes can reach it. Without a ``worker`` node config it runs
the full ClientApp in its own process (same behaviour, slower).

Wire format: 8-byte big-endian length + pickle of ``(message, context)``;
the answer is ``("ok", (reply, context))`` or ``("error", text)``. Pickle is
safe here because both ends are the holder's processes.
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import struct
import sys
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


def _send(sock: socket.socket, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(struct.pack(">Q", len(data)) + data)


def _recv(sock: socket.socket) -> object:
    head = _read(sock, 8)
    return pickle.loads(_read(sock, struct.unpack(">Q", head)[0]))


def _read(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise ConnectionError("site worker closed the connection")
        buf += chunk
    return bytes(buf)


def _forward(message: Message, context: Context) -> Message:
    path = context.node_config.get("worker")
    if not path:
        from dataspace.federated.client_app import app as full

        return full(message, context)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        _send(s, (message, context))
        status, payload = _recv(s)  # type: ignore[misc]
    if status != "ok":
        raise RuntimeError(f"site worker: {payload}")
    reply, new_context = payload
    context.state = new_context.state  # what the app remembers between messages
    return reply


@app.train()
def train(message: Message, context: Context) -> Message:
    return _forward(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return _forward(message, context)


@app.query("stats")
def stats(message: Message, context: Context) -> Message:
    return _forward(message, context)


def serve(socket_path: Path) -> None:
    """Serve messages one at a time until killed (the SuperNode sends one at a time)."""
    from dataspace.federated.client_app import app as full

    if socket_path.exists():
        socket_path.unlink()
    old = os.umask(0o177)  # the socket file is created 0600
    try:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(socket_path))
    finally:
        os.umask(old)
    srv.listen(8)
    print(f"site worker ready on {socket_path}", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            try:
                message, context = _recv(conn)  # type: ignore[misc]
                reply = full(message, context)
                _send(conn, ("ok", (reply, context)))
            except Exception as e:  # the error travels back as the ClientApp's error
                _send(conn, ("error", f"{type(e).__name__}: {e}"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, type=Path)
    args = p.parse_args(argv)
    serve(args.socket)


if __name__ == "__main__":
    main(sys.argv[1:])
