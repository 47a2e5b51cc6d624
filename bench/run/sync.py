"""A run that outlives its machine: copied to a durable sink (sync_to) between cells, restored from
it on a new machine, and worked on by one machine at a time.

- **What goes up, and when.** A cell's record once it is final (ok, skipped, or failed for good),
  its log if small, its profiler trace if it has one, run.json and the summary. Uploads happen
  between cells, never while a worker measures. The local files stay the source of truth; an
  upload never fails a cell.
- **A sink that is down.** After a failed upload, the next gaps between cells try one upload each,
  so that a dead sink costs at most one upload's timeout per cell; everything waits in `pending`
  and goes up when the sink answers again. At the end the rest is tried with full retries; what
  still cannot go up makes the invocation exit 3, and the next invocation catches up.
- **One record per cell.** A final record is created in the sink only if the sink has none for
  that cell (an exclusive create): a machine that measured a cell another machine has already
  recorded keeps its copy locally and the sink keeps the first.
- **One machine at a time.** A lease in the sink (bench.run.sink: generations created
  exclusively) names the machine working the run; a heartbeat renews it. A machine that finds the
  lease held waits for it to expire (a machine that died), or gives up with a message when the
  holder renews it (a machine that is alive). A holder that finds its lease taken over stops as
  if interrupted: the other machine continues the run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from bench.errors import UserError
from bench.results.records import CellRecord, RunMeta
from bench.results.store import RunDir, atomic_write_bytes, atomic_write_text
from bench.run.sink import Sink, SinkError, acquire_lease, release_lease, renew_lease

DEFAULT_LEASE_S = 120.0
LEASE_ENV = "TFBENCH_SYNC_LEASE_S"
SMALL_LOG_BYTES = 64 * 1024  # a cell's log goes up only when it is small
UNFINISHED = ("running", "interrupted")
ATTEMPTS = "attempts"  # <run>/attempts/<cell_id>.json: a cell's record before it is final


def lease_seconds(environ: dict[str, str] | None = None) -> float:
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    raw = environ.get(LEASE_ENV)
    if not raw:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(
            f"{LEASE_ENV} = {raw!r}: allowed: a number of seconds > 0 (default {DEFAULT_LEASE_S:g})"
        )
    return value


def owner_name() -> str:
    """Who holds a lease: the host, the process, and a nonce (a restarted pod may reuse a pid)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def rel(path: Path, output: Path) -> str:
    return PurePosixPath(path.relative_to(output)).as_posix()


# ------------------------------------------------------------------------------------ restore


def _download(
    sink: Sink,
    prefix: str,
    output: Path,
    keep: Callable[[str], bool] = lambda _: True,
    overwrite: bool = True,
) -> int:
    """Copy the sink's files under `prefix` into output/prefix; returns how many."""
    count = 0
    for name in sink.list(prefix):
        path = f"{prefix}/{name}"
        if not keep(path) or "/lease/" in f"/{path}" or (not overwrite and (output / path).exists()):
            continue
        data = sink.get(path)
        if data is None:
            continue
        target = output / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".gz"):  # a profiler trace: compressed, and no token is written into one
            atomic_write_bytes(target, data, durable=False)
        else:
            atomic_write_text(target, data.decode("utf-8"), durable=False)
        count += 1
    return count


def _meta_of(sink: Sink, path: str) -> RunMeta | None:
    data = sink.get(path)
    if data is None:
        return None
    try:
        return RunMeta.model_validate(json.loads(data))
    except (ValueError, TypeError):
        return None


def restore(
    sink: Sink,
    output: Path,
    run_id: str | None,
    shard: str | None,
    run_name: str,
    key: dict[str, Any],
    log: Any,
) -> str | None:
    """Bring an unfinished run of this identity from the sink into `output` when the local results
    lack it: the named run, else the newest unfinished one. Returns its run id, or None."""
    if run_id is not None:
        where = rel(RunDir(output, run_id, shard).path, output)
        if (output / where / "run.json").is_file():
            return None
        meta = _meta_of(sink, f"{where}/run.json")
        if meta is None:
            return None
        found = where
    else:
        candidates = []
        for name in sink.list(""):
            parts = name.split("/")
            if len(parts) != 2 or parts[1] != "run.json" or (output / name).is_file():
                continue
            meta = _meta_of(sink, name)
            if (
                meta is not None
                and meta.run_name == run_name
                and meta.identity == key
                and meta.status in UNFINISHED
            ):
                candidates.append((meta.started_at or "", parts[0], meta))
        if not candidates:
            return None
        _, found, meta = max(candidates)
    # An unsharded run leaves its shards (a merged run's inputs) in the sink.
    count = _download(
        sink, found, output, keep=lambda p: shard is not None or not p.startswith(f"{found}/shards/")
    )
    # A cell without a final record continues from its attempts so far.
    attempts, cells = output / found / ATTEMPTS, output / found / "cells"
    for path in sorted(attempts.glob("*.json")) if attempts.is_dir() else []:
        cells.mkdir(parents=True, exist_ok=True)
        if not (cells / path.name).exists():
            path.replace(cells / path.name)
    if attempts.is_dir():
        shutil.rmtree(attempts)
    log.emit(
        "run_restored",
        run_id=meta.run_id,
        path=str(output / found),
        files=count,
        message=f"restored run {meta.run_id} from {sink.url} ({count} files): it continues here",
    )
    return meta.run_id


def download_run(sink: Sink, run_id: str, output: Path) -> int:
    """Every file of a run (its shards too) from the sink into output/run_id; files this machine
    has already are kept (they are what it uploaded)."""
    return _download(sink, run_id, output, overwrite=False)


def upload_tree(sink: Sink, root: Path, output: Path, skip: Iterable[str] = ()) -> int:
    """Every run file under `root` (not locks, scratch or work files) to the sink; returns how many."""
    skipped = tuple(skip)
    count = 0
    for path in sorted(root.rglob("*")):
        name = rel(path, output)
        if (
            not path.is_file()
            or path.name.startswith(".")
            or "/work/" in f"/{name}"
            or name.startswith(skipped)
        ):
            continue
        sink.put(name, path.read_bytes())
        count += 1
    return count


# ------------------------------------------------------------------------------------ the lease


class Lease:
    """The run's lease in the sink, and its heartbeat."""

    def __init__(self, sink: Sink, key: str, ttl_s: float, log: Any, owner: str | None = None):
        self.sink, self.key, self.ttl_s, self.log = sink, key, ttl_s, log
        self.owner = owner or owner_name()
        self.lost: str | None = None  # why the lease is no longer ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Take the lease; wait for a dead holder's lease to expire; UserError when a live one renews it."""
        seen_expiry: float | None = None
        while True:
            try:
                state = acquire_lease(self.sink, self.key, self.owner, self.ttl_s)
            except SinkError as exc:
                # Unreachable now: nobody else can take it either. Work on; the heartbeat retries.
                self.log.emit(
                    "sync_unreachable", level="warning", message=f"lease not taken ({exc}); continuing"
                )
                break
            if state.held:
                break
            if seen_expiry is not None and state.expires_at > seen_expiry:
                raise UserError(
                    f"run {self.key} is being worked on by {state.owner} (its lease in {self.sink.url} was "
                    "renewed while this machine waited): let that machine finish, or stop it first"
                )
            seen_expiry = state.expires_at
            wait = max(0.1, state.expires_at - time.time() + 0.5)
            self.log.emit(
                "lease_wait",
                level="warning",
                owner=state.owner,
                message=f"run {self.key} is leased to {state.owner} for {wait:.0f} s more; waiting for it to expire "
                "(a machine that was stopped), or to be renewed (a machine still working)",
            )
            sleep(wait)
        self._thread = threading.Thread(target=self._beat, name="tfbench-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                state = renew_lease(self.sink, self.key, self.owner, self.ttl_s)
            except SinkError:
                continue  # the sink is down for everyone: nobody can take the lease meanwhile
            if not state.held:
                self.lost = f"the lease of run {self.key} was taken over by {state.owner}"
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost is None:
            with contextlib.suppress(SinkError):
                release_lease(self.sink, self.key, self.owner)


# ------------------------------------------------------------------------------------ the sync


class RunSync:
    """Copies one run directory's final files to the sink, between cells."""

    def __init__(self, sink: Sink, rundir: RunDir, log: Any, lease: Lease | None = None):
        self.sink, self.rundir, self.log, self.lease = sink, rundir, log, lease
        self.output = rundir.output
        self.prefix = rel(rundir.path, self.output)
        self.pending: dict[str, bool] = {}  # path in the sink -> whether it is a create-once record
        self.uploaded: set[str] = set()
        self.down = False
        self.failure: str | None = None  # the last upload that failed at the end, for the message
        self._probe = copy.copy(sink)  # the same sink and filesystem, one try per operation
        self._probe.retries = 0

    @property
    def lost(self) -> str | None:
        return self.lease.lost if self.lease is not None else None

    def begin(self, done: Iterable[CellRecord]) -> None:
        """At the start of an invocation: what the sink has, and the final records it lacks."""
        try:
            self.uploaded = {f"{self.prefix}/cells/{n}" for n in self.sink.list(f"{self.prefix}/cells")}
        except SinkError:
            self.uploaded = set()
        for record in done:
            self._queue_record(record)
        self.pending[f"{self.prefix}/run.json"] = False
        self.flush(quick=True)

    def _queue_record(self, record: CellRecord) -> None:
        name = f"{self.prefix}/cells/{record.cell_id}.json"
        if name not in self.uploaded:
            self.pending[name] = True
        log = self.rundir.log_path(record.cell_id)
        with contextlib.suppress(OSError):
            if log.stat().st_size <= SMALL_LOG_BYTES:
                self.pending[rel(log, self.output)] = False
        # A profiled cell's trace goes with its record, whatever its size: it is what was asked for.
        if record.profile is not None and record.profile.trace:
            self.pending[rel(self.rundir.trace_path(record.cell_id), self.output)] = False

    def cell(self, record: CellRecord, final: bool) -> None:
        """After a cell's attempt: its record goes up once it is final, with run.json. An attempt
        that is not final (failed with attempts left, interrupted) goes to attempts/, so that a
        new machine continues the cell's attempt count rather than starting it afresh."""
        if final:
            self._queue_record(record)
            self.pending[f"{self.prefix}/run.json"] = False
        elif record.status != "running":
            self.pending[f"{self.prefix}/{ATTEMPTS}/{record.cell_id}.json"] = False
        self.flush(quick=True)

    def end(self) -> bool:
        """The invocation's end: everything final goes up, with full retries. False if the sink
        could not take it (the next invocation catches up)."""
        for path in (self.rundir.run_json, self.rundir.summary):
            if path.is_file():
                self.pending[rel(path, self.output)] = False
        self.flush(quick=False)
        return not self.pending

    def flush(self, quick: bool) -> None:
        """Upload what is pending. quick (between cells): while the sink is down, one upload is
        tried as a probe, the rest waits."""
        # While the sink is down, a gap between cells probes it with one try, not the retries.
        sink = self._probe if quick and self.down else self.sink
        for name, once in list(self.pending.items()):
            path = self.output / name
            if f"/{ATTEMPTS}/" in name:  # the cell's record as it stands, sent as its attempts
                path = self.rundir.cells / name.rsplit("/", 1)[1]
            try:
                data = path.read_bytes()
            except OSError:
                self.pending.pop(name)
                continue
            try:
                if once:
                    created = sink.create(name, data)
                    if not created:
                        self.log.emit(
                            "sync_kept",
                            level="warning",
                            path=name,
                            message=f"the sink already holds {name}: its record is kept, this machine's stays local",
                        )
                else:
                    sink.put(name, data)
            except SinkError as exc:
                if not self.down:
                    self.log.emit(
                        "sync_unreachable",
                        level="warning",
                        message=f"{exc}; the results stay here and go up when it answers again",
                    )
                self.down = True
                if not quick:
                    self.failure = str(exc)
                if quick or exc.transient:
                    return  # unreachable: the other files would wait the same retries for nothing
                continue
            if self.down:
                self.log.emit("sync_resumed", message=f"{self.sink.url} answers again; catching up")
                self.down = False
            self.pending.pop(name)
            self.uploaded.add(name)
