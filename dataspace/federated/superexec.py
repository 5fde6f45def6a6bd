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
import time
from collections.abc import Callable

from dataspace.federated.latency import Pacer


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
            status = run_task(res.token)
            print(
                f"{time.time():.3f} run {res.task.run_id} task {res.task.task_id}: {status} "
                f"in {time.perf_counter() - t0:.3f}s",
                flush=True,
            )
        else:
            pacer.wait()
