"""Worker processes as the runner sees them: the fork server they come from, one worker started,
watched and stopped, and what its end means (a result, a crash, an OOM kill, a timeout, a stop).

Workers are forked from a fork server that has preloaded torch and transformers (imports only),
so a fresh process costs a fraction of a second instead of the seconds a new interpreter needs.
The runner never imports torch nor initializes CUDA. A timeout kills the worker's whole process
group (it leads its own session), with every compile helper it started.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.results.records import Task
from bench.results.store import read_json

LOG_TAIL_LINES = 30

_CONTEXT: Any = None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def worker_context() -> Any:
    """The fork-server context, created once per parent process."""
    global _CONTEXT
    if _CONTEXT is None:
        # torch.cuda.is_available() in the server would create driver state that forked
        # children inherit; ask NVML instead (it creates none).
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["bench.worker.cell"])
        _CONTEXT = ctx
    return _CONTEXT


def start_worker_server(stop: Callable[[], bool] = lambda: False) -> bool:
    """Start the fork server and wait until its preload is done (one trivial child proves it).

    The preload takes seconds (longer on a slow disk), and the start blocks in a read that a
    signal handler cannot cut short; so it runs in a thread, and this returns False as soon as
    `stop()` says so. The server, a child of this process, ends when this process exits.
    """
    from bench.worker.child import ping

    def check() -> None:
        proc = worker_context().Process(target=ping, name="tfbench-server-check")
        proc.start()
        proc.join()

    thread = threading.Thread(target=check, name="tfbench-server-start", daemon=True)
    thread.start()
    while thread.is_alive():
        if stop():
            return False
        thread.join(0.05)
    return True


def oom_kill_count() -> int | None:
    """The cgroup's OOM-kill counter, to tell an OOM kill from another SIGKILL; None if unknown."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class Ended:
    """How one worker process ended, before it is judged."""

    pid: int | None
    exitcode: int | None
    ended_by: str | None  # "timeout" or "interrupted" when the parent stopped it
    t_start: float
    t_exit: float
    started_at: str
    ooms_before: int | None


def run_worker(
    task: Task,
    name: str,
    timeout_s: float,
    stopping: Callable[[], bool],
    on_phase: Callable[[str, int, int], None],
) -> Ended:
    """Start one worker on `task`, relay its phases, stop it at the deadline or on a stop."""
    ctx = worker_context()
    receiver, sender = ctx.Pipe(duplex=False)
    # Never written: the worker watches it and ends itself when this process is gone.
    guard_r, guard_w = ctx.Pipe(duplex=False)
    ooms_before = oom_kill_count()
    started_at = now_iso()
    from bench.worker.child import main as child_main

    proc = ctx.Process(target=child_main, args=(task, sender, guard_r), name=name)
    t_start = time.perf_counter()
    proc.start()
    sender.close()
    guard_r.close()
    deadline = t_start + timeout_s
    ended_by: str | None = None
    while True:
        ready = multiprocessing.connection.wait([receiver, proc.sentinel], timeout=0.2)
        if receiver in ready:
            _drain(receiver, on_phase)
        if proc.sentinel in ready:
            break
        if stopping():
            ended_by = "interrupted"
        elif time.perf_counter() > deadline:
            ended_by = "timeout"
        if ended_by:
            _kill(proc)
            break
    proc.join()
    ended = Ended(proc.pid, proc.exitcode, ended_by, t_start, time.perf_counter(), started_at, ooms_before)
    receiver.close()
    guard_w.close()
    proc.close()
    return ended


class LocalWorkers:
    """Workers forked from this process's own fork server: the transformers installed here.

    The runner talks to its workers through this interface; bench.run.side offers the same for a
    transformers source of another directory or environment, served by a process of its own.
    """

    description: dict[str, Any] | None = None  # what code the workers measure; None: this install's

    def start(self, stop: Callable[[], bool]) -> bool:
        return start_worker_server(stop)

    run = staticmethod(run_worker)

    def close(self) -> None:
        """The fork server ends with this process."""


def _drain(receiver: Any, on_phase: Callable[[str, int, int], None]) -> None:
    try:
        while receiver.poll():
            msg = receiver.recv()
            if msg and msg[0] == "phase":
                _, name, i, total = msg
                on_phase(name, i, total)
    except (EOFError, OSError):
        pass


def _kill(proc: Any) -> None:
    # The worker leads its own process group (setsid): kill the group, then the worker itself
    # in case it had not reached setsid yet.
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            kill()


@dataclass
class Outcome:
    """What a worker's end means: a status, why, the timing fields, and its result if it wrote one."""

    status: str
    reason: str | None = None
    error: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # worker_pid, log, timing, isolation
    result: dict[str, Any] | None = None  # the worker's measurements (status ok or a failure)


def judge(
    ended: Ended, result_path: Path, log_path: Path, log_name: str, timeout_s: float, stop_signal: int | None
) -> Outcome:
    """Tell a result, a crash, an OOM kill, a timeout and an orderly stop apart."""
    timing = {
        "started_at": ended.started_at,
        "finished_at": now_iso(),
        "duration_s": ended.t_exit - ended.t_start,
    }
    fields: dict[str, Any] = {"worker_pid": ended.pid, "log": log_name, **timing}
    result = None
    if result_path.exists():
        try:
            result = read_json(result_path)
        except (OSError, ValueError) as exc:
            fields["result_read_error"] = str(exc)
    if ended.ended_by == "timeout":
        return Outcome(
            "timeout",
            f"no result within cell_timeout_s={timeout_s:g} s; the worker's process group was killed",
            {"kind": "timeout", "log_tail": log_tail(log_path)},
            fields,
        )
    if ended.ended_by == "interrupted":
        return Outcome("interrupted", f"stopped by {signal_name(stop_signal or 0)}", None, fields)
    if isinstance(result, dict) and "status" in result:
        entered, finished = result.pop("entered_at", None), result.pop("finished_at", None)
        if entered is not None and finished is not None:
            # Process isolation cost: fork and start-up before the worker ran, exit after it wrote.
            spawn_s, exit_s = entered - ended.t_start, ended.t_exit - finished
            fields["isolation"] = {"spawn_s": spawn_s, "exit_s": exit_s, "overhead_s": spawn_s + exit_s}
        status = result.pop("status")
        error = result.pop("error", None)
        reason = result.pop("reason", None)  # a skip says why in words of its own
        if isinstance(error, dict):
            reason = f"{error.get('type', 'error')}: {error.get('message', '')}".strip()[:500]
            error["log_tail"] = log_tail(log_path)
        result.pop("worker_pid", None)
        return Outcome(str(status), reason, error, fields, result)
    # No result: the worker died before it could write one.
    code = ended.exitcode
    if code is not None and code < 0:
        sig = -code
        killed_by_oom = (
            sig == signal.SIGKILL
            and ended.ooms_before is not None
            and (oom_kill_count() or 0) > ended.ooms_before
        )
        status = "oom" if killed_by_oom else "failed"
        reason = (
            f"the worker was killed by the kernel's OOM killer ({signal_name(sig)})"
            if killed_by_oom
            else f"the worker crashed with {signal_name(sig)}"
        )
        kind = "oom" if killed_by_oom else "crash"
        error = {"kind": kind, "signal": signal_name(sig), "log_tail": log_tail(log_path)}
        return Outcome(status, reason, error, fields)
    reason = f"the worker exited with code {code} without a result"
    return Outcome(
        "failed", reason, {"kind": "crash", "exit_code": code, "log_tail": log_tail(log_path)}, fields
    )
