"""The first code a worker process runs. Kept free of heavy imports so the parent can name it
as a process target without importing torch (the worker module is preloaded in the fork server).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
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


def limit_memory(limit_gb: float | None) -> int | None:
    """Cap this process's private memory at limit_gb GiB; returns the limit in bytes (None: no limit).

    RLIMIT_DATA, not RLIMIT_AS: it counts what a cell allocates (heap, torch's CPU tensors, private
    mappings) but not address space reserved without memory behind it, such as the CUDA driver's
    huge PROT_NONE reservations or shared libraries, which would make RLIMIT_AS fail any CUDA cell.
    Children of the worker (compile helpers, the GPU sampler) inherit the same limit each.
    """
    if limit_gb is None:
        return None
    limit = int(limit_gb * 2**30)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # an unprivileged process cannot raise its hard limit
    # Soft and hard alike: nothing the cell runs may lift it again.
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    return limit


def place(cuda_visible_devices: str | None, cpus: list[int] | None) -> None:
    """Put this worker on its GPUs and cores. Runs before anything initializes CUDA (the fork
    server never does), so CUDA sees only these GPUs, numbered from 0."""
    if cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    if cpus:
        os.sched_setaffinity(0, cpus)


def _fail_early(result_path: str, exc: BaseException, what: str) -> None:
    """Write a failed result for an error before the worker proper started, and leave."""
    from bench.results.store import atomic_write_json

    traceback.print_exc()
    atomic_write_json(
        result_path,
        {
            "status": "failed",
            "worker_pid": os.getpid(),
            "error": {"kind": "python", "type": type(exc).__name__, "message": f"{what}: {exc}"},
        },
    )
    os._exit(0)


def _anonymous_locks() -> None:
    """Make the multiprocessing locks that libraries create in this worker anonymous semaphores.

    A process started by a fork server takes the server's start method as its default, and under
    it every multiprocessing lock is a named semaphore registered with the runner's resource
    tracker, whose descriptor the worker inherits. tqdm makes one (torch.compile draws a progress
    bar while it traces a graph); the worker leaves through os._exit or is killed, so no finalizer
    ever unlinks it, and the tracker warns of "leaked semaphore objects" when the runner exits.
    Under "fork" a lock's semaphore is unlinked as soon as it is made: there is nothing to leak,
    whichever way the worker ends. Libraries that start processes name their context themselves
    (torch's compile workers run as subprocesses, its autotuning spawns).
    """
    multiprocessing.set_start_method("fork", force=True)


def main(given: dict[str, Any] | Any, conn: Any, guard: Any) -> None:
    entered = time.perf_counter()
    os.setsid()  # own process group: a timeout kills the worker and every compile helper it started
    _die_with_runner(guard)
    _anonymous_locks()
    from bench.results.records import Task

    # Validated where it enters the process; a task the runner built wrong is a bug, said in the result.
    raw = given if isinstance(given, dict) else given.model_dump()
    log_fd = os.open(raw["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        task = Task.model_validate(raw)
    except ValueError as exc:
        _fail_early(raw["result_path"], exc, "the task is not valid")
    try:
        place(task.cuda_visible_devices, task.cpus)
    except (OSError, ValueError) as exc:
        _fail_early(task.result_path, exc, f"cannot place the worker on cores {task.cpus}")
    try:
        # Before anything of the cell runs, and after the runner watch's thread has its stack.
        task.memory_limit_bytes = limit_memory(task.cell_memory_limit_gb)
    except (OSError, ValueError) as exc:
        _fail_early(task.result_path, exc, f"cannot apply cell_memory_limit_gb={task.cell_memory_limit_gb}")
    how = None
    try:
        from bench.worker.cell import run_cell

        if task.cell.get("tp_size", 1) > 1:
            # The ranks of a tensor-parallel cell, launched from this worker.
            from bench.worker.tp_group import measure_group as how
    except BaseException as exc:  # noqa: BLE001 - a broken install must still yield a result
        _fail_early(task.result_path, exc, "worker import failed")
    run_cell(task, conn, entered, how)


def ping() -> None:
    """A no-op child: its start returns once the fork server has finished its preload."""
    os._exit(0)
