"""The parent: runs every cell of a plan in fresh worker processes and records the outcome.

Each cell is measured in `processes` workers (bench.run.workers), each with its own warm-up and
its share of the timed runs. The processes of different cells are interleaved in time: process 0
of every cell, then process 1 of every cell, ... (round-robin; `process_order: shuffled` draws
each round's order from the seed, recorded in run.json), so that a slow drift of the machine
spreads over every cell instead of landing on one. A cell's record is written after each of its
processes (status "partial" until the last is in), so a kill costs at most the process that ran.
A cell whose process fails gets its next attempt after every other cell had its turn; the
processes it already measured are kept. SIGINT/SIGTERM stop the run in order.

With a GPU pool (bench.run.pool) several cells run at once: a greedy list scheduler walks the units
in that same order and starts each one whose cell has no unit in flight (a cell's processes join
its record in order) as soon as a slot (GPUs and host cores) is free; each running unit waits for
its worker on a thread of its own, and everything else (records of the run, the reporter's lines,
sync, signals) happens on the calling thread when a unit ends. A failed unit frees its slot at once.
"""

from __future__ import annotations

import contextlib
import queue
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import SCHEMA_VERSION, __version__
from bench.errors import EXIT_CELL_FAILED, EXIT_OK, StorageError
from bench.plan.matrix import Cell, Plan
from bench.results.assemble import FIRST_PROCESS_KEYS, add_process, finish
from bench.results.records import (
    FAILED_STATUSES,
    CellRecord,
    RunMeta,
    Settings,
    Task,
    ValidationError,
    describe_error,
    status_counts,
)
from bench.results.store import RunDir, storage_errors
from bench.run.pool import Pool, Slot, gpus_needed, one_at_a_time
from bench.run.resume import needs_run, previous_attempts, remove_stale_temporaries, settle_running
from bench.run.workers import LocalWorkers, judge, now_iso, signal_name
from bench.secrets import redact_file

# Record keys that hold what a cell's processes measured so far (kept across its attempts).
MEASURED_KEYS = ("runs", "processes", *FIRST_PROCESS_KEYS, "memory", "roofline")


def new_run_id(run_name: str, output: Path, clock: Callable[[], datetime] | None = None) -> str:
    stamp = (clock or (lambda: datetime.now(timezone.utc)))().strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}-{run_name}"
    run_id, k = base, 2
    while (output / run_id).exists():
        run_id, k = f"{base}-{k}", k + 1
    return run_id


@dataclass
class RunState:
    counts: dict[str, int] = field(default_factory=dict)
    stop_signal: int | None = None


@dataclass
class Current:
    """The worker process in progress, for the record a failing results volume leaves it."""

    cell: Cell
    attempt: int
    process: int
    history: list[dict[str, Any]]
    measured: dict[str, Any]
    announced: bool = False  # its "running" record is on disk
    slot: Slot = field(default_factory=Slot)
    log: Any = None  # the attempt's log, held open while its worker runs (Runner._hold_log)

    @property
    def scratch(self) -> str:
        return scratch_name(self.cell.cell_id, self.attempt, self.process)


def scratch_name(cell_id: str, attempt: int, process: int) -> str:
    """A scratch directory per worker: one of a killed earlier attempt may still be exiting."""
    return f"{cell_id}.{attempt}.{process}"


def measured_part(record: CellRecord | None) -> dict[str, Any]:
    """What the processes of a cell measured so far, from its latest record."""
    if record is None or not record.processes:
        return {}
    data = record.to_dict()
    return {k: data[k] for k in MEASURED_KEYS if k in data}


class Locked:
    """The reporter, called from the threads of concurrent units one at a time."""

    def __init__(self, inner: Any):
        self.inner = inner
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return target(*args, **kwargs)

        return call


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
        workers: Any = None,
        sync: Any = None,
        pool: Pool | None = None,
    ):
        self.rundir = rundir
        self.plan = plan
        self.settings = settings
        self.run_meta = run_meta
        self.reporter = Locked(reporter)
        # The latest record of each cell from earlier invocations of this run (resume).
        self.records: dict[str, CellRecord] = dict(previous or {})
        self.state = RunState()
        # The worker processes in progress, by cell id (several with a pool).
        self.current: dict[str, Current] = {}
        self._current_lock = threading.Lock()
        self.meta: RunMeta | None = None
        # Which GPUs and cores each cell gets; one cell at a time without placement by default.
        self.pool = pool or one_at_a_time()
        self._halt = False  # stop the running workers: the results volume failed
        # Where workers come from: this process's fork server, or a side server (bench.run.side).
        self.workers = workers or LocalWorkers()
        self._done_before: list[tuple[Cell, CellRecord]] = []
        # Copies final files to a durable sink between cells (bench.run.sync.RunSync), or None.
        self.sync = sync
        self.synced = True  # False when the sink could not take everything at the end

    # -- signals ----------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.state.stop_signal is None:
            self.state.stop_signal = signum

    def _install_signals(self) -> dict[int, Any]:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self.on_signal)
        return previous

    # -- the run ----------------------------------------------------------------------------

    def execute(self) -> int:
        previous = self._install_signals()
        try:
            return self._execute()
        except StorageError as exc:
            raise self.storage_failed(exc) from exc
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def storage_failed(self, exc: StorageError) -> StorageError:
        """Stop in order when the results volume refuses a write (full, read-only, gone).

        The reporter is closed already and no worker is alive (the scheduler stops and waits for
        the others when one unit's write fails). Each write here is best effort, since the volume
        may refuse it too: each attempt in progress is recorded "interrupted" (not charged: the volume failed, not the cell), else
        left so that a restart does not charge it either; then run.json says why the run stopped.
        """
        currents, self.current = list(self.current.values()), {}
        for cur in currents:
            self._release_log(cur)
        for cur in currents:
            cid, scratch = cur.cell.cell_id, cur.scratch
            reason = f"the results volume failed ({exc.reason}) while writing {exc.path}"
            rec = self._record(
                cur.cell,
                "interrupted",
                reason=reason,
                attempt=cur.attempt,
                attempts=cur.history,
                finished_at=now_iso(),
                **cur.measured,
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
                if cur.announced and cur.attempt == 1 and not cur.measured:
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

    def _missing(self, cell: Cell) -> list[int]:
        rec = self.records.get(cell.cell_id)
        done = {p.index for p in rec.processes} if rec is not None else set()
        return [k for k in range(self.settings.processes) if k not in done]

    def _rounds(self, cells: list[Cell]) -> list[list[tuple[Cell, int]]]:
        """The (cell, process) units still to run, round by round: process k of every cell, then k + 1."""
        order = random.Random(self.settings.seed) if self.settings.process_order == "shuffled" else None
        rounds: list[list[tuple[Cell, int]]] = []
        pending = {c.cell_id: self._missing(c) for c in cells}
        while any(pending.values()):
            this = [(c, pending[c.cell_id].pop(0)) for c in cells if pending[c.cell_id]]
            if order is not None:
                order.shuffle(this)
            rounds.append(this)
        return rounds

    def _execute(self) -> int:
        self.begin()
        for _ in self.steps():
            pass
        return self.end()

    def begin(self) -> None:
        """Settle what an earlier invocation left, write run.json, record the skipped cells."""
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
        code = {"code_under_test": self.workers.description} if self.workers.description else {}
        meta = self.run_meta.model_copy(
            update={
                "schema_version": SCHEMA_VERSION,
                "tfbench_version": __version__,
                "finished_at": None,
                "status": "running",
                "started_at": self.run_meta.started_at or now_iso(),
                **code,
            }
        )
        self.meta = meta
        self.rundir.write_run(meta)
        self._done_before = []
        for cell in self.plan.cells:
            rec = records.get(cell.cell_id)
            if not cell.runnable and rec is None:
                rec = self._record(cell, "skipped", reason=cell.skip_reason)
                self.rundir.write_cell(rec)
                records[cell.cell_id] = rec
            if rec is not None and self._final(rec):
                self._done_before.append((cell, rec))
        if self.sync is not None:
            self.sync.begin([rec for _, rec in self._done_before])

    def steps(self) -> Iterator[None]:
        """Run the cells, one worker process per step (callers may interleave two runners' steps)."""
        records, meta = self.records, self.meta
        assert meta is not None
        todo = [
            c for c in self.plan.runnable if needs_run(records.get(c.cell_id), self.settings.max_attempts)
        ]
        self.reporter.start(self.plan)
        try:  # the live display must be closed whatever happens, or the terminal is left garbled
            for cell, rec in self._done_before:
                # Cells finished by an earlier invocation count, but only skips get their line again.
                self.reporter.cell_done(cell, rec, final=True, quiet=rec.status != "skipped")
            if todo:
                # Start the fork server now, so its one-time imports are not charged to the first cell.
                self.reporter.note("starting the worker server (imports torch and transformers once)")
                t = time.perf_counter()
                self.workers.start(lambda: self.state.stop_signal is not None)
                meta.worker_server_start_s = time.perf_counter() - t
            while todo and self.state.stop_signal is None:
                yield from self._pass(todo)
                # Failed cells get their next attempt after every other cell had its turn.
                todo = [
                    c
                    for c in todo
                    if (rec := records.get(c.cell_id)) is not None
                    and rec.status in FAILED_STATUSES
                    and not self._final(rec)
                ]
        finally:
            self.reporter.stop()

    def _stopping(self) -> bool:
        return self.state.stop_signal is not None or self._halt

    def _pass(self, cells: list[Cell]) -> Iterator[None]:
        """One attempt at every unit still missing of `cells`: a greedy list scheduler over the units
        in round order (see the module docstring); yields after each unit has ended."""
        records = self.records
        waiting = [unit for units in self._rounds(cells) for unit in units]
        stopped: set[str] = set()  # cells whose process failed in this pass
        running: dict[str, tuple[threading.Thread | None, Slot]] = {}
        ended: queue.SimpleQueue[tuple[str, CellRecord | None, BaseException | None]] = queue.SimpleQueue()
        failure: BaseException | None = None
        inline = self.pool.size == 1  # one at a time: on this thread, as a plain call
        cells_by_id = {c.cell_id: c for c in cells}

        def work(cell: Cell, process: int, previous: CellRecord | None, slot: Slot) -> None:
            try:
                ended.put((cell.cell_id, self._unit(cell, process, previous, slot), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the scheduling thread
                ended.put((cell.cell_id, None, exc))

        while waiting or running:
            if self._stopping() or failure is not None:
                waiting = []  # nothing new starts; the running units end (stopped) on their own
            for unit in list(waiting):
                cell, process = unit
                if cell.cell_id in stopped:
                    waiting.remove(unit)
                    continue
                if cell.cell_id in running:
                    continue
                slot = self.pool.acquire(gpus_needed(cell))
                if slot is None:
                    continue  # a later unit may need fewer GPUs
                waiting.remove(unit)
                previous = records.get(cell.cell_id)
                if inline:
                    running[cell.cell_id] = (None, slot)
                    try:
                        work_done = self._unit(cell, process, previous, slot)
                    finally:
                        self.pool.release(slot)
                    ended.put((cell.cell_id, work_done, None))
                    break
                thread = threading.Thread(
                    target=work, args=(cell, process, previous, slot), name=f"tfbench-{cell.cell_id[:8]}"
                )
                running[cell.cell_id] = (thread, slot)
                thread.start()
            if not running:
                break
            try:
                cid, rec, exc = ended.get(timeout=0.2)
            except queue.Empty:
                continue  # a signal handler may have asked to stop: look again
            thread, slot = running.pop(cid)
            if thread is not None:
                thread.join()
                self.pool.release(slot)
            if exc is not None or rec is None:
                # The results volume failed (or a bug): stop the others, then let execute() say so.
                failure, self._halt = failure or exc, True
                continue
            cell = cells_by_id[cid]
            records[cid] = rec
            if rec.status != "partial":
                self.reporter.cell_done(cell, rec, final=self._final(rec))
                if self.sync is not None:  # on this thread, between two units
                    self.sync.cell(rec, final=self._final(rec))
                    if self.sync.lost and self.state.stop_signal is None:
                        self.reporter.note(f"stopping: {self.sync.lost}")
                        self.state.stop_signal = signal.SIGTERM
            if rec.status not in ("ok", "partial"):
                stopped.add(cid)
            yield
        if failure is not None:
            raise failure

    def end(self) -> int:
        """Write the summary and the run's end; the exit code."""
        records, meta = self.records, self.meta
        assert meta is not None
        self._drop_caches()
        mine = [records[c.cell_id] for c in self.plan.cells if c.cell_id in records]
        self.rundir.write_summary(mine)
        counts = self.state.counts = status_counts(mine, len(self.plan.cells))
        interrupted = self.state.stop_signal is not None
        meta.finished_at = now_iso()
        meta.status = "interrupted" if interrupted else "finished"
        meta.counts = counts
        if interrupted:
            meta.interrupted_by = signal_name(self.state.stop_signal or 0)
        self.rundir.write_run(meta)
        with contextlib.suppress(OSError):
            self.rundir.work.rmdir()
        if self.sync is not None:
            self.synced = self.sync.end()
        if interrupted:
            return 128 + int(self.state.stop_signal or 0)
        return EXIT_CELL_FAILED if any(counts.get(s) for s in FAILED_STATUSES) else EXIT_OK

    def _drop_caches(self) -> None:
        for cache in self.rundir.work.glob("*.cache"):
            shutil.rmtree(cache, ignore_errors=True)

    def _unit(self, cell: Cell, process: int, previous: CellRecord | None, slot: Slot) -> CellRecord:
        """One worker process of a cell: announced on disk first, so a kill at any instant leaves a trace.

        A cell's attempt lasts while its processes succeed; a process that fails ends the attempt,
        and the next one measures only the processes still missing."""
        if previous is None or previous.status == "partial":
            history = [a.to_dict() for a in previous.attempts] if previous is not None else []
            attempt = previous.attempt or 1 if previous is not None else 1
        else:
            history = previous_attempts(previous)
            attempt = len(history) + 1
        measured = measured_part(previous)
        extra = {"started_at": now_iso(), "process_in_flight": process}
        running = self._record(cell, "running", attempt=attempt, attempts=history, **measured, **extra)
        cur = Current(cell, attempt, process, history, measured, slot=slot)
        with self._current_lock:
            self.current[cell.cell_id] = cur
        self.rundir.write_cell(running)
        cur.announced = True
        self.reporter.cell_started(cell, attempt, process, self.settings.processes, slot=slot.fields())
        try:
            rec = self._run_process(cur)
        finally:
            self._release_log(cur)
        rec = rec.with_updates(attempt=attempt, attempts=history)
        self.rundir.write_cell(rec)
        with self._current_lock:
            self.current.pop(cell.cell_id, None)
        # Only now: until the outcome is on disk, the scratch tells a restart what happened.
        self.rundir.drop_scratch(scratch_name(cell.cell_id, attempt, process))
        return rec

    def _hold_log(self, cur: Current, log_path: Path, header: str) -> None:
        """Append the attempt's header to its log and keep the file open until the worker is gone.

        The kernel refuses to remount a volume read-only while a file on it is open for writing.
        Held from before the scratch directory is made until the worker has exited, this keeps
        such a remount out of the moments where the scratch would not tell a restart whether the
        worker ran (see resume.settle_running).
        """
        with storage_errors(log_path):
            cur.log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by _release_log
            cur.log.write(header)
            cur.log.flush()

    def _release_log(self, cur: Current) -> None:
        if cur.log is not None:
            with contextlib.suppress(OSError):  # flushed already: nothing is lost if this fails
                cur.log.close()
            cur.log = None

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

    def _run_process(self, cur: Current) -> CellRecord:
        cell, attempt, process, measured, slot = cur.cell, cur.attempt, cur.process, cur.measured, cur.slot
        processes = self.settings.processes
        log_path = self.rundir.log_path(cell.cell_id)
        header = f"=== tfbench: cell {cell.cell_id} process {process + 1}/{processes} attempt {attempt} at {now_iso()} ===\n"
        self._hold_log(cur, log_path, header)
        cache = self.rundir.work / f"{cell.cell_id}.cache"
        reused = cache.is_dir() and any(cache.iterdir())
        with storage_errors(cache):
            cache.mkdir(parents=True, exist_ok=True)
        # Made last before the worker starts: on a restart, no scratch means no worker ran.
        scratch = self.rundir.scratch(scratch_name(cell.cell_id, attempt, process))
        result_path = scratch / "result.json"
        task = Task(
            cell=cell.to_dict(),
            process=process,
            processes=processes,
            warmup_iterations=self.settings.warmup_iterations,
            measurement_iterations=self.settings.runs_of(process),
            seed=self.settings.seed,
            trust_remote_code=self.settings.trust_remote_code,
            gpu_monitoring=self.settings.gpu_monitoring,
            gpu_sample_interval_s=self.settings.gpu_sample_interval_s,
            cell_memory_limit_gb=self.settings.cell_memory_limit_gb,
            log_path=str(log_path),
            scratch_dir=str(scratch),
            cache_dir=str(cache),
            result_path=str(result_path),
            profile=self.settings.profile,
            trace_path=str(self.rundir.trace_path(cell.cell_id)),
            trace_name=str(self.rundir.trace_path(cell.cell_id).relative_to(self.rundir.root)),
            cuda_visible_devices=slot.cuda_visible_devices,
            cpus=list(slot.cpus) if slot.cpus is not None else None,
        )
        ended = self.workers.run(
            task,
            f"tfbench-{cell.cell_id}-{process}",
            self.settings.cell_timeout_s,
            self._stopping,
            lambda name, i, total: self.reporter.cell_phase(cell, name, i, total),
        )
        self._release_log(cur)
        redact_file(log_path)  # the worker wrote its log through inherited fds, unfiltered
        # Relative to the run's directory, also in a shard: the merged run then holds the same record.
        log_name = str(log_path.relative_to(self.rundir.root))
        outcome = judge(
            ended, result_path, log_path, log_name, self.settings.cell_timeout_s, self.state.stop_signal
        )
        if outcome.status == "interrupted" and self.state.stop_signal is None:
            outcome.reason = "stopped: the results volume failed while another cell was running"
        fields = {**outcome.fields, "compile_cache": "reused" if reused else "fresh", **slot.fields()}
        if outcome.status != "ok" or outcome.result is None:
            # A failed process's partial numbers never join the cell's; what the others measured stays.
            extra = {
                k: v for k, v in (outcome.result or {}).items() if k not in ("runs", "stats", "processes")
            }
            fields = {**extra, **measured, **outcome.fields}
            return self._record(cell, outcome.status, reason=outcome.reason, error=outcome.error, **fields)
        measured = add_process(measured, process, outcome.result, {**fields, "attempt": attempt})
        complete = len(measured["processes"]) >= processes
        if complete:
            measured = finish(measured)
        status = "ok" if complete else "partial"
        try:
            return self._record(cell, status, **outcome.fields, **measured)
        except ValidationError as exc:  # the worker's result file is the boundary: checked here
            why = describe_error(exc, "the worker's result is not a valid cell record")
            return self._record(
                cell, "failed", reason=why, error={"kind": "result", "message": why}, **outcome.fields
            )
