"""Resume: which run a restarted container continues, and which of its cells still need a run.

A run is identified for resuming by what makes its numbers comparable: the plan (every cell id
and whether it runs), the measurement settings, the shard, and the hardware. A container
restarted with the same config and results volume continues the newest unfinished run with the
same identity; a finished run is never touched again. Attempt accounting is pure and lives
here too; the lock that keeps two live processes out of one run directory as well.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.plan.matrix import Plan
from bench.results.records import CellRecord, RunMeta
from bench.results.store import RunDir, Skipped, atomic_write_json, read_meta, scan_cells, storage_errors

# Run statuses that a later invocation may continue ("running" is what a killed runner leaves).
UNFINISHED = ("running", "interrupted")
# Attempt outcomes charged against max_attempts. An orderly stop by a signal is not the cell's
# doing and is not charged; a cell that was running when the whole run was killed ("lost")
# is, so that a cell that brings the machine down cannot loop forever.
CHARGED = ("failed", "oom", "timeout", "lost")
RETRYABLE = ("failed", "oom", "timeout", "interrupted", "running")
FINAL = ("ok", "skipped")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def identity(
    plan: Plan,
    settings: Mapping[str, Any],
    hardware: str,
    shard: str | None,
    code: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What must match for a run to be continued: mixing any of these would mix incomparable numbers.

    code: the transformers source measured instead of the installed one (absent when there is none,
    so that runs started before the field existed still continue)."""
    key = {
        "cells": _digest([[c.cell_id, c.runnable] for c in plan.cells]),
        "settings": dict(settings),
        "hardware": hardware,
        "shard": shard,
    }
    if code:
        key["code"] = dict(code)
    return key


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    words = {
        "cells": "the plan (cells or what runs)",
        "settings": "measurement settings",
        "hardware": "hardware",
        "shard": "shard",
        "code": "the transformers measured",
    }
    out = []
    for key, label in words.items():
        a, b = old.get(key), new.get(key)
        if a != b:
            out.append(f"{label}: {a!r} then, {b!r} now" if key != "cells" else label)
    return out


def charged_attempts(record: CellRecord | None) -> int:
    """Attempts of a cell that count against max_attempts, its current record included."""
    if record is None:
        return 0
    history = [h.status for h in record.attempts]
    return sum(1 for s in [*history, record.status] if s in CHARGED)


def lost_record(record: CellRecord) -> CellRecord:
    """A record left as "running" by a run that was killed: the attempt is lost."""
    return record.with_updates(
        status="lost", reason="the run was killed while this cell ran; no result was written"
    )


def settle_running(rundir: RunDir, record: CellRecord) -> CellRecord:
    """What a "running" record left by an earlier invocation stands for.

    The attempt's scratch directory tells: the runner creates it just before it starts the
    worker and removes it only once the attempt's outcome is recorded (or, after a failed
    write, once it knows the worker is gone). No scratch: the worker never started. A result in
    it: the worker finished and the run stopped before recording it. Neither attempt is the
    cell's doing, so neither is charged. Otherwise the worker may have been running when the
    run died: the attempt is lost, and charged.
    """
    process = (record.model_extra or {}).get("process_in_flight")
    name = f"{record.cell_id}.{record.attempt or 1}" + (f".{process}" if process is not None else "")
    scratch = rundir.work / name
    if not scratch.is_dir():
        reason = "the run stopped before this attempt's worker started"
    elif (scratch / "result.json").is_file():
        reason = "the run stopped after the worker finished, before its result was recorded"
    else:
        return lost_record(record)
    return record.with_updates(status="interrupted", reason=reason)


def needs_run(record: CellRecord | None, max_attempts: int) -> bool:
    """Whether a runnable cell with this latest record (None: never started) runs (again)."""
    if record is None:
        return True
    status = record.status
    if status in FINAL:
        return False
    if status == "running":
        record = lost_record(record)
    if status == "failed" and record.error is not None and record.error.retryable is False:
        return False  # a deterministic fault (a broken model) fails the same way every time
    return charged_attempts(record) < max_attempts


def history_entry(record: CellRecord) -> dict[str, Any]:
    """The short form of a finished attempt, kept in the next attempt's record."""
    keys = ("attempt", "status", "reason", "started_at", "finished_at", "duration_s", "worker_pid")
    return {k: getattr(record, k) for k in keys}


def previous_attempts(record: CellRecord | None) -> list[dict[str, Any]]:
    """The history a new attempt of this cell carries: earlier attempts plus the latest one."""
    if record is None:
        return []
    if record.status == "running":
        record = lost_record(record)
    return [*(a.to_dict() for a in record.attempts), history_entry(record)]


class RunLock:
    """An exclusive lock on a run directory, held while a process works in it.

    flock is released by the kernel when the holder dies, however it dies, so a run left by a
    killed container is free at once while a live one cannot be entered twice.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        # Read-only first: a file open for writing for the whole run would keep the volume from
        # being remounted read-only. NFS emulates flock with fcntl locks, which need write access.
        for mode in (os.O_RDONLY, os.O_RDWR):
            with storage_errors(self.path):
                fd = os.open(self.path, mode | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.EBADF and mode == os.O_RDONLY:
                    continue
                raise
            self.fd = fd
            return True
        return False

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_path(run_path: Path) -> Path:
    return run_path / ".lock"


def unfinished_candidates(output: Path, run_name: str, key: Mapping[str, Any]) -> list[Path]:
    """Run directories in `output` this invocation may continue, newest first."""
    found: list[tuple[str, Path]] = []
    try:
        entries = list(output.iterdir())
    except OSError:
        return []
    for path in entries:
        # Anything else in the output (lost+found, notes, a directory without a run) is no run.
        try:
            meta = read_meta(path) if path.is_dir() and not path.name.startswith(".") else None
        except OSError:
            continue
        if (
            meta is not None
            and meta.run_name == run_name
            and meta.status in UNFINISHED
            and meta.identity == key
            and not meta.shard
        ):
            found.append((meta.started_at or "", path))
    return [p for _, p in sorted(found, reverse=True)]


def records_for(rundir: RunDir, cell_ids: Iterable[str]) -> tuple[dict[str, CellRecord], list[Skipped]]:
    """The latest record of each of these cells in a run directory, and the files in its cells/
    that are not cell records (the store writes atomically: such a file was put there)."""
    wanted = set(cell_ids)
    records, skipped = scan_cells(rundir.cells)
    return {r.cell_id: r for r in records if r.cell_id in wanted}, skipped


@dataclass
class Selected:
    """The run directory an invocation works in, and what an earlier invocation left there."""

    rundir: RunDir
    lock: RunLock
    meta: RunMeta | None = None  # run.json of the run being continued
    records: dict[str, CellRecord] = field(default_factory=dict)
    finished: bool = False  # an explicitly named run that is already finished: nothing to do
    skipped: list[Skipped] = field(default_factory=list)  # files in cells/ that are not records


def _continue(rundir: RunDir, lock: RunLock, meta: RunMeta, plan: Plan, finished: bool = False) -> Selected:
    records, skipped = records_for(rundir, (c.cell_id for c in plan.cells))
    return Selected(rundir, lock, meta, records, finished=finished, skipped=skipped)


def select_run(
    output: Path,
    run_id: str | None,
    shard: str | None,
    run_name: str,
    key: dict[str, Any],
    plan: Plan,
    new_id: Any,
) -> Selected:
    """Pick the run directory: continue the named or the newest matching unfinished run, else a new one.

    A named run (TFBENCH_RUN_ID / --run-id) that exists must have the same identity; if it is
    finished there is nothing to do. Without a name, unfinished runs of the same identity are
    continued, newest first, skipping any that a live process holds.
    """
    from bench.errors import UserError

    if run_id is not None:
        rundir = RunDir(output, run_id, shard)
        where = f"run {run_id}" + (f" shard {shard}" if shard else "")
        if rundir.path.exists():
            meta = read_meta(rundir.path)
            if meta is None:
                if any(not p.name.startswith(".") for p in rundir.path.iterdir()):
                    raise UserError(f"{rundir.path} exists and is not a tfbench run (no readable run.json)")
                meta = None
            lock = RunLock(lock_path(rundir.path))
            if not lock.acquire():
                raise UserError(f"{where} in {output} is in use by another tfbench process")
            if meta is None:
                return Selected(rundir, lock)
            if meta.identity != key:
                lock.release()
                diffs = identity_differences(meta.identity or {}, key)
                raise UserError(
                    f"{where} in {output} was started with a different "
                    + "; ".join(diffs or ["set-up (it predates resume)"])
                    + ". Numbers of both would not compare: choose another run id, or restore the set-up"
                )
            return _continue(rundir, lock, meta, plan, finished=meta.status == "finished")
        with storage_errors(rundir.path):
            rundir.path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(lock_path(rundir.path))
        if not lock.acquire():
            raise UserError(f"{where} in {output} is in use by another tfbench process")
        return Selected(rundir, lock)
    for path in unfinished_candidates(output, run_name, key):
        lock = RunLock(lock_path(path))
        if lock.acquire():
            meta = read_meta(path)
            if meta is not None and meta.status in UNFINISHED:  # re-read under the lock
                return _continue(RunDir(output, path.name), lock, meta, plan)
            lock.release()
    while True:
        run_id = new_id()
        if _claim(output, run_id, run_name, key):
            rundir = RunDir(output, run_id)
            lock = RunLock(lock_path(rundir.path))
            if lock.acquire():
                return Selected(rundir, lock)


def _claim(output: Path, run_id: str, run_name: str, key: Mapping[str, Any]) -> bool:
    """Create a new run directory whole: built under a hidden name with a first run.json, then
    renamed into place, so a kill at any instant leaves either no run or one that can be continued."""
    tmp = output / f".claim-{run_id}-{os.getpid()}"
    with storage_errors(tmp):
        tmp.mkdir(parents=True)
    stub = {
        "run_id": run_id,
        "run_name": run_name,
        "status": "running",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "identity": dict(key),
        "shard": None,
    }
    try:
        atomic_write_json(tmp / "run.json", stub)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        # Linux renames onto an empty directory, never onto one holding a run.json.
        os.rename(tmp, output / run_id)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def remove_stale_temporaries(rundir: RunDir) -> None:
    """Temporary files of atomic writes cut short by a kill (never a result: those are renamed)."""
    for d in (rundir.path, rundir.cells):
        for tmp in d.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
