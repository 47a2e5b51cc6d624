"""The first code a worker process runs. Kept free of heavy imports so the parent can name it
as a process target without importing torch (the worker module is preloaded in the fork server).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from typing import Any


def _die_with_runner(guard: Any) -> None:
    """Kill this worker's process group when the runner is gone.

    The worker leads its own session, so if the runner were killed with SIGKILL nothing would
    stop it. The runner holds the other end of `guard` and never writes to it: end of file
    means the runner has exited. A thread blocked on the read costs nothing meanwhile.
    """

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            guard.recv()
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="tfbench-runner-watch", daemon=True).start()


def main(task: dict[str, Any], conn: Any, guard: Any) -> None:
    entered = time.perf_counter()
    os.setsid()  # own process group: a timeout kills the worker and every compile helper it started
    _die_with_runner(guard)
    log_fd = os.open(task["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        from .worker import run_cell
    except BaseException as exc:  # noqa: BLE001 - a broken install must still yield a result
        from .store import atomic_write_json

        traceback.print_exc()
        atomic_write_json(
            task["result_path"],
            {
                "status": "failed",
                "worker_pid": os.getpid(),
                "error": {
                    "kind": "python",
                    "type": type(exc).__name__,
                    "message": f"worker import failed: {exc}",
                },
            },
        )
        os._exit(0)
    run_cell(task, conn, entered)


def ping() -> None:
    """A no-op child: its start returns once the fork server has finished its preload."""
    os._exit(0)
