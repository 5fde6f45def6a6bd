"""The hub's warm ServerApp executor: ``python -m dataspace.federated.hub_worker``.

Flower 1.42's SuperLink starts a fresh ``flwr-serverapp`` process for every
run, which imports Flower, torch and the app before the first message leaves
(10 s and more on a loaded 2-core machine, see bench/RESULTS.md fl_overhead).
With ``flower-superlink --isolation process`` this long-lived process is the
SuperLink's SuperExec for ServerApp tasks instead: it polls the SuperLink's
Runtime API (``AcquireTask``, signed with the shared SuperExec HMAC secret,
over the SuperLink's TLS with the project's CA) and runs each run's ServerApp
in this warm process as ``flwr-serverapp`` would (pull the task input with the
task's token, ``HttpGrid``, heartbeats, push the final status). It runs only
:data:`dataspace.federated.server_app.app`: a bundle whose ``serverapp``
component names other code fails. Logs are not streamed to ``flwr run
--stream`` (the run's outcome is in its run directory, as before).

With ``--runs-dir RUNS`` (the hub's deployment) every run writes to
``RUNS/<run-id>``, whatever its run config's ``out-dir`` says, and only a run the
hub registered with the same contracts runs at all (:func:`.rundir.confine`): a
consumer chooses its run's id, never a path on the hub's host. Without it the run
config's ``out-dir`` is used as given (the local deployment engine, whose caller
is the machine's owner).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dataspace.federated.fab import bundle_component
from dataspace.federated.rundir import confine
from dataspace.federated.superexec import TaskHeartbeat, serve_tasks

#: ``[tool.flwr.app.components] serverapp`` of bundles this executor runs
OWN_SERVERAPPS = frozenset({"dataspace.federated.server_app:app"})


def run_task(
    runtime_api: str, certificates: bytes, token: str, app: Any, runs_dir: Path | None = None
) -> str:
    """One ServerApp task in this process (``flwr.superlink.runtime.run_serverapp``, 1.42).

    ``runs_dir``: confine the run to ``runs_dir/<run-id>`` (module docstring)."""
    from flwr.common.config import get_fused_config_from_fab
    from flwr.common.constant import SubStatus
    from flwr.common.serde import (
        context_from_proto,
        context_to_proto,
        fab_from_proto,
        run_from_proto,
    )
    from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
        PullTaskInputRequest,
        PushTaskOutputRequest,
    )
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.grid import HttpGrid

    grid = HttpGrid(runtime_api, insecure=False, root_certificates=certificates, token=token)
    client = grid._runtime_client
    heartbeat = TaskHeartbeat(client).start()  # never signals this warm process
    context = None
    status, details = SubStatus.FAILED, "ServerApp task failed"
    try:
        res = client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id = res.task_id
        TaskIdentity.run_id = res.run.run_id
        TaskIdentity.node_id = res.context.node_id
        context = context_from_proto(res.context)
        run = run_from_proto(res.run)
        fab = fab_from_proto(res.fab)
        grid.set_run(run)
        bundle_component(fab.content, "serverapp", OWN_SERVERAPPS)
        context.run_config = get_fused_config_from_fab(fab.content, run)
        if runs_dir is not None:  # before anything of the run happens
            context.run_config = confine(context.run_config, runs_dir)
        app(grid=grid, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as e:  # reported as the run's failure, as flwr-serverapp does
        details = f"ServerApp failed with exception: {type(e).__name__}: {e}"
        print(details, file=sys.stderr, flush=True)
    finally:
        try:
            grid._retry_invoker.max_tries = 1
            client.PushTaskOutput(
                PushTaskOutputRequest(
                    context=context_to_proto(context) if context else None,
                    sub_status=status,
                    details=details,
                )
            )
        finally:
            heartbeat.stop()
            grid.close()
    return str(status)


#: seconds between AcquireTask calls after 30 s without a task (fast: ``poll``)
IDLE_POLL = 0.25


def execute(
    runtime_api: str,
    certificates: bytes,
    secret: bytes,
    poll: float = 0.05,
    runs_dir: Path | None = None,
) -> None:
    """Act as the SuperLink's SuperExec for ServerApp tasks until killed (``runs_dir``:
    see the module docstring)."""
    from flwr.supercore.constant import TaskType

    # heavy (torch), and only in the SuperExec process
    from dataspace.federated.server_app import app

    serve_tasks(
        runtime_api,
        secret,
        str(TaskType.SERVER_APP),
        lambda token: run_task(runtime_api, certificates, token, app, runs_dir),
        certificates=certificates,
        poll=poll,
        idle_poll=IDLE_POLL,
        name="hub worker",
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime-api", required=True, help="the SuperLink's HOST:PORT")
    p.add_argument("--root-certificates", required=True, type=Path, help="CA of its TLS")
    p.add_argument("--secret-file", required=True, type=Path, help="SuperExec HMAC secret")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between AcquireTask calls")
    p.add_argument("--runs-dir", type=Path, default=None, help="confine runs to RUNS/<run-id>")
    args = p.parse_args(argv)
    execute(
        args.runtime_api,
        args.root_certificates.read_bytes(),
        args.secret_file.read_bytes(),
        args.poll,
        args.runs_dir,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
