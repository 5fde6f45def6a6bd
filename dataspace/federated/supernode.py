"""``flower-supernode`` with shorter waits: ``python -m dataspace.federated.supernode ARGS``.

Flower 1.42's SuperNode asks the SuperLink for a message, and when there is
none sleeps a fixed 3 s (``time.sleep(3)`` in
``flwr.supernode.start_client_internal``, no flag or variable); it waits for
its ClientApp's reply in 0.5 s steps, and retries a message object that is not
uploaded yet after 1, 2, 4 ... s. Every message of a round therefore waited
seconds before any work began. This launcher runs Flower's own
``flower_supernode`` entry point, with the same arguments and the same TLS,
node authentication and FAB verification, after capping those sleeps at
``DATASPACE_SUPERNODE_POLL`` seconds (default 0.1) while messages flow (0.5 s
after 30 s without one: idle polling costs CPU, :class:`.latency.Pacer`) and
the object retries at 20-250 ms (:mod:`.latency`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from dataspace.federated.latency import Pacer, cap_sleeps, fast_object_pulls

#: seconds between pulls while messages are flowing, and when idle for 30 s
DEFAULT_POLL = 0.1
IDLE_POLL = 0.5


def patch(poll: float, idle_poll: float = IDLE_POLL) -> Pacer:
    """Shorten the SuperNode loop's waits (pull, reply wait, object retries)."""
    from flwr.supernode import start_client_internal

    pacer = Pacer(poll, idle_poll)
    pull = start_client_internal._pull_and_store_message

    def pull_and_mark(*args: Any, **kwargs: Any) -> Any:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            pacer.active()
        return run_id

    start_client_internal._pull_and_store_message = pull_and_mark
    cap_sleeps(start_client_internal, pacer)
    fast_object_pulls(start_client_internal)
    return pacer


def main(argv: list[str] | None = None) -> None:
    from flwr.supernode.cli import flower_supernode

    patch(float(os.environ.get("DATASPACE_SUPERNODE_POLL", DEFAULT_POLL)))
    if os.environ.get("DATASPACE_LOG_TIMES"):  # timelines for bench/fl_overhead.py
        from flwr.supercore.logger import update_console_handler

        update_console_handler(level=20, timestamps=True, colored=False)
    sys.argv = ["flower-supernode", *(sys.argv[1:] if argv is None else argv)]
    flower_supernode()


if __name__ == "__main__":
    main()
