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

Executor mode (``--runtime-api HOST:PORT --secret-file F``, the default of
:mod:`.deploy`): the SuperNode runs with ``--isolation process`` and this
worker *is* its SuperExec for ClientApp tasks. It polls the SuperNode's
Runtime API (``AcquireTask``, signed with the shared SuperExec HMAC secret, so
no other local process can take a task), and runs each task in this warm
process exactly as ``flwr-clientapp`` would (pull the task input with the
task's token, run the app, push the reply and the context, heartbeats
meanwhile), but without starting a process per message. The app it runs is
always the connector's own :data:`dataspace.federated.client_app.app`; a
bundle (FAB) whose ``clientapp`` component names other code is refused. The
SuperNode still verifies the FAB (``--trusted-entities``) before a task
exists.
"""

from __future__ import annotations

import argparse
import itertools
import os
import pickle
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from dataspace.federated.fab import bundle_component
from dataspace.federated.superexec import TaskHeartbeat, serve_tasks

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
        # heavy (torch, Opacus): only a SuperNode without a warm worker loads the full app
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
    # heavy (torch, Opacus): the warm worker loads the full app once; this module stays lean
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


#: ``[tool.flwr.app.components] clientapp`` values of bundles that name the connector's code
OWN_CLIENTAPPS = frozenset(
    {"dataspace.federated.site_worker:app", "dataspace.federated.client_app:app"}
)


def check_bundle(fab_content: bytes) -> str:
    """The bundle's ``clientapp``, when it is the connector's own code (else refused).

    Flower 1.42 verifies only bundles signed through Flower Hub, so a holder cannot
    use ``--trusted-entities`` for local bundles; this check is the holder's
    guarantee instead: the worker runs its own installed ClientApp, never a bundle's.
    """
    return bundle_component(fab_content, "clientapp", OWN_CLIENTAPPS)


def pull_task_input(client: Any) -> tuple[Message, Context, Any]:
    """The task's message, context and FAB, as Flower's ``pull_task_input`` gets them.

    Same calls as ``flwr.supernode.runtime.run_clientapp.pull_task_input`` (1.42),
    but the message's objects are polled every 20-200 ms instead of Flower's
    1, 2, 4 ... s backoff: the SuperNode creates the task before it has fetched
    the message's objects from the SuperLink, so a warm executor that takes the
    task at once would otherwise sleep seconds on every message.
    """
    from flwr.common.serde import context_from_proto, fab_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
        PullAppMessagesRequest,
        PullTaskInputRequest,
    )
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    fab = fab_from_proto(res.fab)
    msgs = client.PullMessages(PullAppMessagesRequest())
    if not msgs.messages_list:
        raise RuntimeError("no message for this task from the Runtime API")
    node = Node(node_id=context.node_id)
    tree = msgs.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        initial_backoff=0.02,
        backoff_cap=0.2,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, fab


def run_task(runtime_api: str, token: str, full: ClientApp) -> str:
    """One ClientApp task, as ``flwr-clientapp`` runs it, in this process.

    Returns its status and the seconds spent pulling, running and pushing (worker log).

    Mirrors ``flwr.supernode.runtime.run_clientapp.run_clientapp`` (Flower 1.42)
    without the FAB install, the app import and the process exit.
    """
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api,
        insecure=True,  # loopback, inside the holder's machine; the token names the task
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = TaskHeartbeat(client).start()  # never signals this warm process
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    t = [time.perf_counter()]
    try:
        message, context, fab = pull_task_input(client)
        t.append(time.perf_counter())
        check_bundle(fab.content)
        reply = full(message=message, context=context)
        t.append(time.perf_counter())
        status, details = SubStatus.COMPLETED, ""
    except Exception as e:  # the ClientApp's error becomes an error reply, as in Flower
        details = f"{type(e).__name__}: {e}"
        print(f"task failed: {details}", file=sys.stderr, flush=True)
        if message is not None:
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                reply_to=message,
            )
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client, context, status, details)
            t.append(time.perf_counter())
            heartbeat.stop()
            client.close()
    steps = " ".join(f"{b - a:.3f}" for a, b in itertools.pairwise(t))
    return f"{status} (pull/app/push s: {steps})"


#: seconds between AcquireTask calls after 30 s without a task (fast: ``poll``)
IDLE_POLL = 0.5


def execute(runtime_api: str, secret: bytes, poll: float = 0.05) -> None:
    """Act as the SuperNode's SuperExec for ClientApp tasks until killed."""
    from flwr.supercore.constant import TaskType

    # heavy (torch, Opacus), and only in the SuperExec process
    from dataspace.federated.client_app import app as full

    serve_tasks(
        runtime_api,
        secret,
        str(TaskType.CLIENT_APP),
        lambda token: run_task(runtime_api, token, full),
        certificates=None,
        poll=poll,
        idle_poll=IDLE_POLL,
        name="site worker",
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", type=Path, help="serve the ClientApp proxy on this Unix socket")
    p.add_argument("--runtime-api", help="be the SuperExec of this SuperNode Runtime API")
    p.add_argument("--secret-file", type=Path, help="SuperExec HMAC secret (with --runtime-api)")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between AcquireTask calls")
    args = p.parse_args(argv)
    if args.runtime_api:
        if args.secret_file is None:
            p.error("--runtime-api needs --secret-file")
        execute(args.runtime_api, args.secret_file.read_bytes(), args.poll)
    elif args.socket:
        serve(args.socket)
    else:
        p.error("give --socket PATH or --runtime-api HOST:PORT --secret-file F")


if __name__ == "__main__":
    main(sys.argv[1:])
