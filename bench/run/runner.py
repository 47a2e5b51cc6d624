"""The parent: runs each cell of a plan in a fresh worker process, in order, and records the outcome.

It never imports torch nor initializes CUDA. Workers are forked from a fork server that has
preloaded torch and transformers (imports only), so a fresh process costs a fraction of a
second instead of the seconds a new interpreter needs. The parent enforces the cell timeout
by killing the worker's whole process group, tells crashes, out-of-memory, timeouts and
Python errors apart, and turns SIGINT/SIGTERM into an orderly stop.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import SCHEMA_VERSION, __version__
from bench.errors import EXIT_CELL_FAILED, EXIT_OK, StorageError
from bench.plan.matrix import Cell, Plan
from bench.results.records import (
    FAILED_STATUSES,
    CellRecord,
    RunMeta,
    Settings,
    ValidationError,
    describe_error,
    status_counts,
)
from bench.results.store import RunDir, read_json, storage_errors
from bench.run.resume import needs_run, previous_attempts, remove_stale_temporaries, settle_running
from bench.secrets import redact_file

LOG_TAIL_LINES = 30


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id(run_name: str, output: Path, clock: Callable[[], datetime] | None = None) -> str:
    stamp = (clock or (lambda: datetime.now(timezone.utc)))().strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}-{run_name}"
    run_id, k = base, 2
    while (output / run_id).exists():
        run_id, k = f"{base}-{k}", k + 1
    return run_id


_CONTEXT: Any = None


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


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class RunState:
    counts: dict[str, int] = field(default_factory=dict)
    stop_signal: int | None = None


@dataclass
class Current:
    """The attempt in progress, for the record a failing results volume leaves it."""

    cell: Cell
    attempt: int
    history: list[dict[str, Any]]
    announced: bool = False  # its "running" record is on disk


class Runner:
    """Runs one plan into one run directory."""

    def __init__(
        self,
        rundir: RunDir,
        plan: Plan,
        settings: Settings,
        run_meta: RunMeta,
        reporter: Any,
        previous: dict[str, CellRecord] | None = None,
    ):
        self.rundir = rundir
        self.plan = plan
        self.settings = settings
        self.run_meta = run_meta
        self.reporter = reporter
        # The latest record of each cell from earlier invocations of this run (resume).
        self.records: dict[str, CellRecord] = dict(previous or {})
        self.state = RunState()
        self.current: Current | None = None
        self.meta: RunMeta | None = None
        self._held_log: Any = None

    # -- signals ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.state.stop_signal is None:
            self.state.stop_signal = signum

    def _install_signals(self) -> dict[int, Any]:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    # -- the run ----------------------------------------------------------------------------

    def execute(self) -> int:
        previous = self._install_signals()
        try:
            return self._execute()
        except StorageError as exc:
            raise self._storage_failed(exc) from exc
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _storage_failed(self, exc: StorageError) -> StorageError:
        """Stop in order when the results volume refuses a write (full, read-only, gone).

        The reporter is closed already and no worker is alive (nothing is written while one
        runs). Each write here is best effort, since the volume may refuse it too: the attempt in
        progress is recorded "interrupted" (not charged: the volume failed, not the cell), else
        left so that a restart does not charge it either; then run.json says why the run stopped.
        """
        self._release_log()
        cur, self.current = self.current, None
        if cur is not None:
            cid, scratch = cur.cell.cell_id, f"{cur.cell.cell_id}.{cur.attempt}"
            reason = f"the results volume failed ({exc.reason}) while writing {exc.path}"
            rec = self._record(
                cur.cell,
                "interrupted",
                reason=reason,
                attempt=cur.attempt,
                attempts=cur.history,
                finished_at=now_iso(),
            )
            try:
                self.rundir.write_cell(rec)
                self.records[cid] = rec
                self.rundir.drop_scratch(scratch)
            except StorageError:
                if not (self.rundir.work / scratch / "result.json").exists():
                    # The worker is gone without a result; without its scratch a restart knows
                    # no worker of this attempt can have brought the run down.
                    self.rundir.drop_scratch(scratch)
                if cur.announced and cur.attempt == 1:
                    # The "running" record holds no history yet: without it the cell starts afresh.
                    with contextlib.suppress(OSError):
                        self.rundir.cell_path(cid).unlink()
        written = [
            rec
            for c in self.plan.cells
            if (rec := self.records.get(c.cell_id)) is not None and rec.status != "running"
        ]
        if self.meta is not None:
            counts = status_counts(written, len(self.plan.cells))
            self.meta = self.meta.model_copy(
                update={
                    "finished_at": now_iso(),
                    "status": "interrupted",
                    "interrupted_by": "storage",
                    "counts": counts,
                    "storage_error": {"path": exc.path, "error": exc.reason},
                }
            )
            with contextlib.suppress(StorageError):
                self.rundir.write_run(self.meta)
        return exc.with_advice(
            f"The {len(written)} results written so far are intact; free space or make the volume "
            "writable, then start again with the same config and volume to continue (the run resumes)."
        )

    def _final(self, record: CellRecord) -> bool:
        return record.status != "interrupted" and not needs_run(record, self.settings.max_attempts)

    def _execute(self) -> int:
        records = self.records
        for cid, rec in list(records.items()):
            if rec.status == "running":
                # Left by an invocation that stopped mid-attempt. Recorded before the scratch
                # directories that tell what happened are removed.
                self.rundir.write_cell(settled := settle_running(self.rundir, rec))
                records[cid] = settled
                # Its runner died before it could redact the worker's log: do it now.
                redact_file(self.rundir.log_path(cid))
        # Scratch of attempts cut short by a kill: nothing in it is a result, and we hold the run's lock.
        shutil.rmtree(self.rundir.work, ignore_errors=True)
        self.rundir.create()
        remove_stale_temporaries(self.rundir)
        meta = self.run_meta.model_copy(
            update={
                "schema_version": SCHEMA_VERSION,
                "tfbench_version": __version__,
                "finished_at": None,
                "status": "running",
                "started_at": self.run_meta.started_at or now_iso(),
            }
        )
        self.meta = meta
        self.rundir.write_run(meta)
        done_before: list[tuple[Cell, CellRecord]] = []
        for cell in self.plan.cells:
            rec = records.get(cell.cell_id)
            if not cell.runnable and rec is None:
                rec = self._record(cell, "skipped", reason=cell.skip_reason)
                self.rundir.write_cell(rec)
                records[cell.cell_id] = rec
            if rec is not None and self._final(rec):
                done_before.append((cell, rec))
        todo = [
            c for c in self.plan.runnable if needs_run(records.get(c.cell_id), self.settings.max_attempts)
        ]
        self.reporter.start(self.plan)
        try:  # the live display must be closed whatever happens, or the terminal is left garbled
            for cell, rec in done_before:
                # Cells finished by an earlier invocation count, but only skips get their line again.
                self.reporter.cell_done(cell, rec, final=True, quiet=rec.status != "skipped")
            if todo:
                # Start the fork server now, so its one-time imports are not charged to the first cell.
                self.reporter.note("starting the worker server (imports torch and transformers once)")
                t = time.perf_counter()
                start_worker_server(lambda: self.state.stop_signal is not None)
                meta.worker_server_start_s = time.perf_counter() - t
            while todo and self.state.stop_signal is None:
                for cell in todo:
                    if self.state.stop_signal is not None:
                        break
                    records[cell.cell_id] = rec = self._attempt(cell, records.get(cell.cell_id))
                    self.reporter.cell_done(cell, rec, final=self._final(rec))
                # Failed cells get their next attempt after every other cell had its first.
                todo = [
                    c
                    for c in todo
                    if (rec := records.get(c.cell_id)) is not None
                    and rec.status in FAILED_STATUSES
                    and not self._final(rec)
                ]
        finally:
            self.reporter.stop()
        mine = [records[c.cell_id] for c in self.plan.cells if c.cell_id in records]
        self.rundir.write_summary(mine)
        counts = self.state.counts = status_counts(mine, len(self.plan.cells))
        interrupted = self.state.stop_signal is not None
        meta.finished_at = now_iso()
        meta.status = "interrupted" if interrupted else "finished"
        meta.counts = counts
        if interrupted:
            meta.interrupted_by = _signal_name(self.state.stop_signal)
        self.rundir.write_run(meta)
        with contextlib.suppress(OSError):
            self.rundir.work.rmdir()
        if interrupted:
            return 128 + int(self.state.stop_signal)
        return EXIT_CELL_FAILED if any(counts.get(s) for s in FAILED_STATUSES) else EXIT_OK

    def _attempt(self, cell: Cell, previous: CellRecord | None) -> CellRecord:
        """One attempt at a cell: announced on disk first, so a kill at any instant leaves a trace."""
        history = previous_attempts(previous)
        attempt = len(history) + 1
        running = self._record(cell, "running", attempt=attempt, attempts=history, started_at=now_iso())
        self.current = Current(cell, attempt, history)
        self.rundir.write_cell(running)
        self.current.announced = True
        self.reporter.cell_started(cell, attempt)
        try:
            rec = self._run_cell(cell, attempt)
        finally:
            self._release_log()
        rec = rec.with_updates(attempt=attempt, attempts=history)
        self.rundir.write_cell(rec)
        self.current = None
        # Only now: until the outcome is on disk, the scratch tells a restart what happened.
        self.rundir.drop_scratch(f"{cell.cell_id}.{attempt}")
        return rec

    def _hold_log(self, log_path: Path, header: str) -> None:
        """Append the attempt's header to its log and keep the file open until the worker is gone.

        The kernel refuses to remount a volume read-only while a file on it is open for writing.
        Held from before the scratch directory is made until the worker has exited, this keeps
        such a remount out of the moments where the scratch would not tell a restart whether the
        worker ran (see resume.settle_running).
        """
        with storage_errors(log_path):
            self._held_log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by _release_log
            self._held_log.write(header)
            self._held_log.flush()

    def _release_log(self) -> None:
        if self._held_log is not None:
            with contextlib.suppress(OSError):  # flushed already: nothing is lost if this fails
                self._held_log.close()
            self._held_log = None

    def _telemetry(self, cell: Cell) -> dict[str, Any]:
        if not self.settings.gpu_monitoring:
            reason = "gpu_monitoring is off"
        elif cell.device != "cuda":
            reason = f"the cell runs on {cell.device}"
        else:
            reason = "the cell was not measured"  # a measured cell's worker reports its own
        return {"available": False, "reason": reason}

    def _record(self, cell: Cell, status: str, **extra: Any) -> CellRecord:
        shard = {"shard": self.rundir.shard} if self.rundir.shard else {}
        return CellRecord.model_validate(
            {
                "schema_version": SCHEMA_VERSION,
                "run_id": self.rundir.run_id,
                **shard,
                "cell_id": cell.cell_id,
                "status": status,
                "reason": extra.pop("reason", None),
                "error": extra.pop("error", None),
                "cell": cell.to_dict(),
                "settings": self.settings.recorded(),
                "gpu_telemetry": self._telemetry(cell),
                **extra,
            }
        )

    def _run_cell(self, cell: Cell, attempt: int = 1) -> CellRecord:
        ctx = worker_context()
        # A scratch directory per attempt: a worker of a killed earlier attempt may still be
        # exiting, and must not write into this one.
        scratch_name = f"{cell.cell_id}.{attempt}"
        log_path = self.rundir.log_path(cell.cell_id)
        self._hold_log(log_path, f"=== tfbench: cell {cell.cell_id} attempt {attempt} at {now_iso()} ===\n")
        # Made last before the worker starts: on a restart, no scratch means no worker ran.
        scratch = self.rundir.scratch(scratch_name)
        result_path = scratch / "result.json"
        task = {
            "cell": cell.to_dict(),
            "warmup_iterations": self.settings.warmup_iterations,
            "measurement_iterations": self.settings.measurement_iterations,
            "seed": self.settings.seed,
            "trust_remote_code": self.settings.trust_remote_code,
            "gpu_monitoring": self.settings.gpu_monitoring,
            "gpu_sample_interval_s": self.settings.gpu_sample_interval_s,
            "cell_memory_limit_gb": self.settings.cell_memory_limit_gb,
            "log_path": str(log_path),
            "scratch_dir": str(scratch),
            "result_path": str(result_path),
        }
        receiver, sender = ctx.Pipe(duplex=False)
        # Never written: the worker watches it and ends itself when this process is gone.
        guard_r, guard_w = ctx.Pipe(duplex=False)
        ooms_before = oom_kill_count()
        started_at = now_iso()
        from bench.worker.child import main as child_main

        proc = ctx.Process(target=child_main, args=(task, sender, guard_r), name=f"tfbench-{cell.cell_id}")
        t_start = time.perf_counter()
        proc.start()
        sender.close()
        guard_r.close()
        deadline = t_start + self.settings.cell_timeout_s
        ended_by: str | None = None  # "timeout" or "interrupted" when the parent stopped it
        while True:
            ready = multiprocessing.connection.wait([receiver, proc.sentinel], timeout=0.2)
            if receiver in ready:
                self._drain(receiver, cell)
            if proc.sentinel in ready:
                break
            if self.state.stop_signal is not None:
                ended_by = "interrupted"
            elif time.perf_counter() > deadline:
                ended_by = "timeout"
            if ended_by:
                self._kill(proc)
                break
        proc.join()
        t_exit = time.perf_counter()
        self._release_log()
        redact_file(log_path)  # the worker wrote its log through inherited fds, unfiltered
        receiver.close()
        guard_w.close()
        return self._classify(
            cell, proc, ended_by, result_path, log_path, t_start, t_exit, started_at, ooms_before
        )

    def _classify(
        self,
        cell: Cell,
        proc: Any,
        ended_by: str | None,
        result_path: Path,
        log_path: Path,
        t_start: float,
        t_exit: float,
        started_at: str,
        ooms_before: int | None,
    ) -> CellRecord:
        timing = {"started_at": started_at, "finished_at": now_iso(), "duration_s": t_exit - t_start}
        # Relative to the run's directory, also in a shard: the merged run then holds the same record.
        base = {"worker_pid": proc.pid, "log": str(log_path.relative_to(self.rundir.root)), **timing}
        result = None
        if result_path.exists():
            try:
                result = read_json(result_path)
            except (OSError, ValueError) as exc:
                result = None
                base["result_read_error"] = str(exc)

        if ended_by == "timeout":
            return self._record(
                cell,
                "timeout",
                reason=f"no result within cell_timeout_s={self.settings.cell_timeout_s:g} s; the worker's process group was killed",
                error={"kind": "timeout", "log_tail": log_tail(log_path)},
                **base,
            )
        if ended_by == "interrupted":
            return self._record(
                cell,
                "interrupted",
                reason=f"stopped by {_signal_name(self.state.stop_signal or 0)}",
                **base,
            )
        if result is not None and "status" in result:
            entered, finished = result.pop("entered_at", None), result.pop("finished_at", None)
            if entered is not None and finished is not None:
                # Process isolation cost: fork and start-up before the worker ran, exit after it wrote.
                spawn_s, exit_s = entered - t_start, t_exit - finished
                base["isolation"] = {"spawn_s": spawn_s, "exit_s": exit_s, "overhead_s": spawn_s + exit_s}
            status = result.pop("status")
            error = result.pop("error", None)
            reason = None
            if error:
                reason = f"{error.get('type', 'error')}: {error.get('message', '')}".strip()[:500]
                error["log_tail"] = log_tail(log_path)
            result.pop("worker_pid", None)
            try:
                return self._record(cell, status, reason=reason, error=error, **base, **result)
            except ValidationError as exc:  # the worker's result file is the boundary: checked here
                why = describe_error(exc, "the worker's result is not a valid cell record")
                return self._record(
                    cell, "failed", reason=why, error={"kind": "result", "message": why}, **base
                )
        # No result: the worker died before it could write one.
        code = proc.exitcode
        if code is not None and code < 0:
            sig = -code
            killed_by_oom = (
                sig == signal.SIGKILL and ooms_before is not None and (oom_kill_count() or 0) > ooms_before
            )
            status = "oom" if killed_by_oom else "failed"
            reason = (
                f"the worker was killed by the kernel's OOM killer ({_signal_name(sig)})"
                if killed_by_oom
                else f"the worker crashed with {_signal_name(sig)}"
            )
            kind = "oom" if killed_by_oom else "crash"
            error = {"kind": kind, "signal": _signal_name(sig), "log_tail": log_tail(log_path)}
        else:
            status = "failed"
            reason = f"the worker exited with code {code} without a result"
            error = {"kind": "crash", "exit_code": code, "log_tail": log_tail(log_path)}
        return self._record(cell, status, reason=reason, error=error, **base)

    def _drain(self, receiver: Any, cell: Cell) -> None:
        try:
            while receiver.poll():
                msg = receiver.recv()
                if msg and msg[0] == "phase":
                    _, name, i, total = msg
                    self.reporter.cell_phase(cell, name, i, total)
        except (EOFError, OSError):
            pass

    @staticmethod
    def _kill(proc: Any) -> None:
        # The worker leads its own process group (setsid): kill the group, then the worker itself
        # in case it had not reached setsid yet.
        for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                kill()
