"""The warm workers' task loop: a SuperExec that runs the apps in its own process.

In Flower 1.42 a SuperNode or SuperLink started with ``--isolation process``
leaves its app tasks to an external SuperExec, which calls ``AcquireTask`` on
the Runtime API (authenticated by an HMAC over a shared secret) and runs each
task it gets. Flower's own SuperExec starts a fresh ``flwr-clientapp`` /
``flwr-serverapp`` process per task (seconds of imports each, measured in
bench/RESULTS.md, fl_overhead); the site and hub workers instead run the task
in the process that already has torch, the data and the plans loaded.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dataspace.federated.latency import Pacer


class TaskHeartbeat:
    """Heartbeats for the task ``client`` runs, in a thread, until :meth:`stop`.

    Not Flower's ``HeartbeatSender`` with ``make_task_heartbeat_fn_http``: that one
    raises SIGINT in the process when the SuperLink or SuperNode declines a beat (the
    task ended, failed or was stopped), right for a ``flwr-clientapp`` process per task,
    fatal for a warm worker serving every task. A run refused at once (one the hub never
    registered) ended before its first beat was answered, and that SIGINT stopped the hub
    worker for every later run. Here a declined beat only ends the beats. Intervals as
    Flower's: a beat at start, then every ~0.8 x (interval - call timeout); a failed call
    is retried after 1, 2, 4 ... 20 s.
    """

    def __init__(self, client: Any) -> None:
        from flwr.common.constant import HEARTBEAT_CALL_TIMEOUT, HEARTBEAT_DEFAULT_INTERVAL

        self._client = client
        self._every = 0.8 * (HEARTBEAT_DEFAULT_INTERVAL - HEARTBEAT_CALL_TIMEOUT)
        self._join_s = 2.0 * HEARTBEAT_CALL_TIMEOUT
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-heartbeat", daemon=True)

    def start(self) -> TaskHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._join_s)  # at most one call in flight, bounded by its timeout

    def _run(self) -> None:
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611

        req = SendTaskHeartbeatRequest()
        backoff = 1.0
        while not self._stop.is_set():
            try:
                res = self._client.SendTaskHeartbeat(req)
            except Exception as e:  # the server is busy or restarting: try again soon
                print(f"task heartbeat: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                self._stop.wait(backoff)
                backoff = min(2 * backoff, 20.0)
                continue
            if not res.success:  # the task is over for the server: no more beats
                return
            backoff = 1.0
            self._stop.wait(self._every)


def serve_tasks(
    runtime_api: str,
    secret: bytes,
    task_type: str,
    run_task: Callable[[str], str],
    *,
    certificates: bytes | None,
    poll: float,
    idle_poll: float,
    name: str,
) -> None:
    """Acquire ``task_type`` tasks from ``runtime_api`` and run each, until killed.

    ``run_task(token)`` runs one task and returns a status line for the log;
    ``certificates`` is the CA of the Runtime API's TLS (None: plaintext on the
    holder's own loopback).
    """
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api,
        insecure=certificates is None,
        root_certificates=certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            SuperExecAuthHttpInterceptor(
                master_secret=secret, protected_methods={"/flwr.proto.Runtime/AcquireTask"}
            ),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    request = AcquireTaskRequest(supported_task_types=[task_type])
    print(f"{name} executing {task_type} tasks of {runtime_api}", flush=True)
    pacer = Pacer(poll, idle_poll)
    while True:
        try:
            res = client.AcquireTask(request)
        except Exception as e:  # the SuperNode / SuperLink is starting or restarting
            print(f"AcquireTask: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            time.sleep(1.0)
            continue
        if res.HasField("task") and res.token:
            pacer.active()
            t0 = time.perf_counter()
            try:
                status = run_task(res.token)
            except Exception as e:  # one task's failure never stops the worker
                status = f"error {type(e).__name__}: {e}"
            print(
                f"{time.time():.3f} run {res.task.run_id} task {res.task.task_id}: {status} "
                f"in {time.perf_counter() - t0:.3f}s",
                flush=True,
            )
        else:
            pacer.wait()
