"""`tfbench run` as a whole: prepare a job per config (plan, shard, identity, run id), check every
one before anything runs, claim or resume each run directory, run its cells, then merge (the last
shard to finish) and push.

The command line only parses; everything a run does between "these configs" and "this exit code"
is here. Nothing imports torch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import __version__
from bench.config.schema import ALLOWED, NAME_RE, LoadedConfig
from bench.errors import EXIT_CELL_FAILED, EXIT_OK, EXIT_PUSH_FAILED, UserError
from bench.output.logs import JsonReporter, warn_skipped
from bench.output.tables import ProgressReporter, print_summary
from bench.plan.matrix import Plan, build_plan
from bench.plan.shard import Shard, shard_plan
from bench.results.records import (
    FAILED_STATUSES,
    CellRecord,
    Environment,
    RunMeta,
    Settings,
    hardware_label,
    status_counts,
)
from bench.results.store import RunDir, atomic_write_json, read_meta
from bench.run.machine import Accelerators, capabilities, detect_accelerators, environment, measured_commit
from bench.run.merge import try_merge
from bench.run.pool import build_pool, gpus_needed, read_topology
from bench.run.resume import Selected, identity, select_run
from bench.run.runner import Runner, new_run_id, now_iso
from bench.run.side import open_side, side_capabilities, side_commit, side_environment

DEFAULT_OUTPUT = "results"


@dataclass(frozen=True)
class RunRequest:
    """What the command line asked for besides the configs."""

    run_id: str | None = None  # --run-id or TFBENCH_RUN_ID
    run_id_source: str = "TFBENCH_RUN_ID"
    shard: Shard | None = None
    shard_source: str = "TFBENCH_SHARD"
    commit: dict[str, Any] | None = None  # the measured commit as the command line says it
    # Called with each run's directory once its invocation ends (finished or interrupted).
    after: Callable[[Path], None] | None = None


@dataclass
class Job:
    """One config's run as prepared before anything runs: its plan, where it goes, how it resumes."""

    loaded: LoadedConfig
    full: Plan  # the whole matrix (what a shard's merge checks against)
    plan: Plan  # the cells this process runs (a shard's share, or all)
    output: Path
    run_id: str | None
    settings: Settings
    key: dict[str, Any]
    shard: Shard | None = None
    selected: Selected | None = None
    workers: Any = None  # a side server when transformers_source names the code to measure
    env: dict[str, Any] | None = None  # run.json's environment as this job's workers see it
    sink: Any = None  # where the run is copied between cells (sync_to), or None
    lease_s: float = 0.0  # how long a lease on the run in the sink lasts unless renewed
    lease: Any = None  # this machine's lease on the run in the sink
    pool: Any = None  # which GPUs and cores each running cell gets (set when the job runs)
    gpus: Any = None  # the GPUs visible here (bench.run.machine.GpuInfo), for the GPU pool


def origin(lc: LoadedConfig, key: str) -> str:
    return f" [{key} from {lc.origins[key]}]" if key in lc.origins else ""


def check_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".tfbench-write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"output directory {output} is not writable: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise UserError(f"output directory {str(output)!r} is not a usable path: {exc}") from None


def job_run_id(request: RunRequest, index: int, total: int) -> str | None:
    explicit = request.run_id
    if not explicit:
        return None
    if not NAME_RE.match(explicit):
        raise UserError(f"{request.run_id_source} = {explicit!r}: {ALLOWED['run_name']}")
    return explicit if total == 1 else f"{explicit}-{index + 1}"


def prepare(
    configs: Sequence[LoadedConfig],
    request: RunRequest,
    accel: Accelerators,
    env: dict[str, Any],
    source_labels: Sequence[str] | None = None,
) -> list[Job]:
    """A job per config. Every config is checked before the first cell runs: a bad line 3 must
    not cost lines 1-2; a refused run creates nothing. source_labels: what each config's
    transformers_source is called in messages (default: the field, and where it came from)."""
    opened: list[Any] = []
    try:
        return _prepare(configs, request, accel, env, opened, source_labels)
    except BaseException:
        for side in opened:  # a refused config must not leave a side server behind
            side.close()
        raise


def _prepare(
    configs: Sequence[LoadedConfig],
    request: RunRequest,
    accel: Accelerators,
    env: dict[str, Any],
    opened: list[Any],
    source_labels: Sequence[str] | None,
) -> list[Job]:
    shard = request.shard
    jobs: list[Job] = []
    for i, lc in enumerate(configs):
        cfg = lc.config
        try:
            caps = capabilities(cfg.device, accel)
        except UserError as exc:
            raise UserError(f"{exc}{origin(lc, 'device')}") from None
        workers, job_env = None, env
        if cfg.transformers_source:
            label = (
                source_labels[i]
                if source_labels
                else "transformers_source" + origin(lc, "transformers_source")
            )
            workers = open_side(cfg.transformers_source, label)
            opened.append(workers)
            caps, job_env = side_capabilities(caps, workers.facts), side_environment(env, workers.facts)
        full = build_plan(cfg, caps)
        iterations = cfg.warmup_iterations + cfg.measurement_iterations
        plan = shard_plan(full, shard, iterations) if shard else full
        output = Path(cfg.output or DEFAULT_OUTPUT)
        run_id = job_run_id(request, i, len(configs))  # before the output is made: a bad id creates nothing
        if cfg.push_to_hub:
            from bench.hub.push import check_push_config

            try:  # a token and a reachable Hub, before any model loads
                check_push_config(cfg.push_to_hub)
            except UserError as exc:
                raise UserError(f"{exc}{origin(lc, 'push_to_hub')}") from None
        sink, lease_s = None, 0.0
        if cfg.sync_to:
            from bench.run.sink import Sink, check_sink_url
            from bench.run.sync import lease_seconds

            try:
                sink = Sink(check_sink_url(cfg.sync_to, "sync_to" + origin(lc, "sync_to")))
                lease_s = lease_seconds()
            except UserError as exc:
                raise UserError(f"{exc}{origin(lc, 'sync_to')}") from None
        if shard and run_id is None:
            raise UserError(
                f"shard {shard} ({request.shard_source}): a sharded run needs TFBENCH_RUN_ID (or --run-id), "
                "the same on every shard, so that the shards write one run"
            )
        settings = Settings.from_config(cfg)
        hardware = hardware_label(Environment.model_validate(job_env), caps.device)
        key = identity(
            full, settings.measured(), hardware, shard and shard.name, workers and workers.description
        )
        jobs.append(
            Job(
                lc,
                full,
                plan,
                output,
                run_id,
                settings,
                key,
                shard,
                workers=workers,
                env=job_env,
                sink=sink,
                lease_s=lease_s,
                gpus=accel.gpus,
            )
        )
    for job in jobs:
        check_output(job.output)
    return jobs


def run_configs(configs: Sequence[LoadedConfig], request: RunRequest, out: Any, err: Any, log: Any) -> int:
    """Run every config, in order; the worst exit code (an interruption stops at once)."""
    accel = detect_accelerators()
    env = environment(accel)
    jobs = prepare(configs, request, accel, env)
    # Then claim the run directories (continuing unfinished runs); each stays locked while it runs.
    try:
        for job in jobs:
            claim(job, log)
        commit = request.commit or measured_commit()
        worst = EXIT_OK
        for job in jobs:
            assert job.selected is not None
            # TFBENCH_COMMIT, said outright, wins over what a source's checkout says.
            said = commit.get("source") in ("TFBENCH_COMMIT", "--commit-id")
            code = run_job(
                job, job.env or env, commit if said else side_commit(job.workers) or commit, out, err, log
            )
            if request.after is not None:
                request.after(job.selected.rundir.path)
            job.selected.lock.release()
            if code not in (EXIT_OK, EXIT_CELL_FAILED):
                return code  # interrupted: stop here, later configs are not started
            worst = max(worst, code)
        return worst
    finally:
        for job in jobs:
            if job.lease is not None:
                job.lease.release()
            if job.selected is not None:
                job.selected.lock.release()
            if job.workers is not None:
                job.workers.close()


def claim(job: Job, log: Any) -> None:
    """Pick the job's run directory (continuing an unfinished run of its identity, from the sink
    when this machine lacks it) and lock it; with a sink, take the run's lease there. A named run
    is leased before it is restored, so that what is restored is what its last holder left."""
    name, output = job.loaded.config.run_name, job.output
    shard = job.shard and job.shard.name
    if job.sink is not None:
        from bench.run.sink import SinkError
        from bench.run.sync import Lease, rel, restore

        if job.run_id is not None:
            job.lease = Lease(job.sink, rel(RunDir(output, job.run_id, shard).path, output), job.lease_s, log)
            job.lease.acquire()
        try:
            restore(job.sink, output, job.run_id, shard, name, job.key, log)
        except SinkError as exc:
            log.emit(
                "sync_unreachable",
                level="warning",
                message=f"cannot look for the run in the sink ({exc}); continuing with the results here",
            )
    job.selected = select_run(
        output,
        job.run_id,
        shard,
        name,
        job.key,
        job.plan,
        lambda: new_run_id(name, output),
    )
    if job.sink is not None and job.lease is None and not job.selected.finished:
        job.lease = Lease(job.sink, rel(job.selected.rundir.path, output), job.lease_s, log)
        job.lease.acquire()


def exit_code(records: Sequence[CellRecord]) -> int:
    return EXIT_CELL_FAILED if any(r.status in FAILED_STATUSES for r in records) else EXIT_OK


def run_meta(job: Job, env: dict[str, Any], commit: Any) -> RunMeta:
    """run.json of a new run, or of the continued one with this invocation added."""
    sel, shard, cfg = job.selected, job.shard, job.loaded.config
    assert sel is not None
    invocation = {"started_at": now_iso(), "hostname": env.get("hostname"), "pid": os.getpid()}
    if sel.meta is not None:
        meta = sel.meta.to_dict()
        meta["invocations"] = [*(meta.get("invocations") or []), invocation]
    else:
        meta = {
            "run_id": sel.rundir.run_id,
            "run_name": cfg.run_name,
            "started_at": invocation["started_at"],
            "invocations": [invocation],
        }
    meta.update(
        config_source=job.loaded.source,
        config_as_given=job.loaded.given,
        config_origins=job.loaded.origins,
        config=cfg.as_given(),
        plan=job.full.to_dict(),  # the whole matrix, also for a shard: the merge checks against it
        identity=job.key,
        environment=env,
        measured_commit=commit,
        shard=None
        if shard is None
        else {
            "index": shard.index,
            "count": shard.count,
            "name": shard.name,
            "cell_ids": [c.cell_id for c in job.plan.cells],
        },
    )
    return RunMeta.model_validate(meta)


def set_aside(job: Job, log: Any) -> None:
    """Name every file in the run's cells/ that is not a record; move aside the ones that sit where
    a planned cell's record belongs, before that cell runs again and its record is written there."""
    sel = job.selected
    assert sel is not None
    planned = {sel.rundir.cell_path(c.cell_id) for c in job.plan.cells}
    for skipped in sel.skipped:
        if sel.finished or skipped.path not in planned:
            warn_skipped(log, skipped)
            continue
        dest = sel.rundir.quarantine(skipped.path)
        warn_skipped(log, skipped, f"moved to {dest}; the cell is done again")


def run_job(job: Job, env: dict[str, Any], commit: Any, out: Any, err: Any, log: Any) -> int:
    """One config's run: its cells, then merge-if-last and push; the exit code."""
    sel, shard, plan, cfg = job.selected, job.shard, job.plan, job.loaded.config
    assert sel is not None
    rundir = sel.rundir
    run_id = rundir.run_id
    label = run_id + (f" shard {shard}" if shard else "")
    device = plan.capabilities.device
    set_aside(job, log)
    if sel.finished:
        records = list(sel.records.values()) or rundir.read_cells()
        log.emit(
            "run_already_finished",
            run_id=run_id,
            shard=shard and shard.name,
            path=str(rundir.path),
            message=f"run {label} already finished ({rundir.path}); nothing to do. "
            "Choose another run id (or none) for a new run.",
        )
        code = exit_code(records)
        if job.sink is not None:  # a finished run whose sync did not finish: catch up now
            from bench.run.sync import RunSync

            sync = RunSync(job.sink, rundir, log)
            sync.begin(records)
            if not sync.end():
                sync_failed(job, sync, log)
                code = EXIT_PUSH_FAILED
    else:
        settled = sum(1 for r in sel.records.values() if r.status in ("ok", "skipped"))
        continued = sel.meta is not None
        log.emit(
            "run_continued" if continued else "run_started",
            run_id=run_id,
            shard=shard and shard.name,
            path=str(rundir.path),
            cells=len(plan.cells),
            runnable=len(plan.runnable),
            skipped=len(plan.skipped),
            already_done=settled,
            message=f"tfbench {__version__}: run {label} {'continues' if continued else 'starts'}: "
            f"{cfg.model} on {device}, {len(plan.runnable)} cells to run, {len(plan.skipped)} skipped"
            + (f", {settled} already done" if continued else "")
            + f" -> {rundir.path}",
        )
        reporter = ProgressReporter(err, label=label) if log.human else JsonReporter(log, run_id)
        sync = None
        if job.sink is not None:
            from bench.run.sync import RunSync

            sync = RunSync(job.sink, rundir, log, job.lease)
        meta = run_meta(job, env, commit)
        meta.concurrency = concurrency(job, log)
        runner = Runner(
            rundir,
            plan,
            job.settings,
            meta,
            reporter,
            previous=sel.records,
            workers=job.workers,
            sync=sync,
            pool=job.pool,
        )
        code = runner.execute()
        if not runner.synced and code in (EXIT_OK, EXIT_CELL_FAILED):
            sync_failed(job, sync, log)
            code = EXIT_PUSH_FAILED
        records = [runner.records[c.cell_id] for c in plan.cells if c.cell_id in runner.records]
    counts = status_counts(records)
    if log.human:
        print_summary(out, records, title=f"{label}: {cfg.model} on {device}")
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if v)
    log.emit(
        "run_finished" if code in (EXIT_OK, EXIT_CELL_FAILED) else "run_interrupted",
        run_id=run_id,
        shard=shard and shard.name,
        path=str(rundir.path),
        counts=counts,
        exit_code=code,
        message=f"results: {rundir.path}  ({text})",
    )
    if code not in (EXIT_OK, EXIT_CELL_FAILED):
        return code  # interrupted: the run continues later, and is pushed when it is finished
    pushed = True
    if shard:
        merged = merge_if_last(job, log)
        if merged and cfg.push_to_hub:
            pushed = push_once(job.output / run_id, cfg.push_to_hub, cfg.push_private, log)
    elif cfg.push_to_hub:
        pushed = push_once(rundir.path, cfg.push_to_hub, cfg.push_private, log)
    return code if pushed else EXIT_PUSH_FAILED


def concurrency(job: Job, log: Any) -> dict[str, Any]:
    """The job's GPU pool (kept on the job), said in the log; what run.json records of it. A shard
    is a plan like any other: a pod with G GPUs runs its shard G-wide."""
    device = job.plan.capabilities.device
    needs = [gpus_needed(c) for c in job.plan.runnable]
    job.pool, meta, warnings = build_pool(
        job.settings.concurrent_cells, device, job.gpus or [], needs, read_topology()
    )
    for text in warnings:
        log.emit("concurrency", level="warning", message=text)
    if meta["used"] > 1:
        log.emit("concurrency", used=meta["used"], message=f"{meta['used']} cells at once ({meta['why']})")
    return meta


def sync_failed(job: Job, sync: Any, log: Any) -> None:
    assert job.selected is not None
    log.emit(
        "sync_failed",
        level="error",
        exit_code=EXIT_PUSH_FAILED,
        pending=len(sync.pending),
        message=f"{len(sync.pending)} files of run {job.selected.rundir.run_id} could not be copied to "
        f"{job.sink.url} ({sync.failure or 'unreachable'}). The results are complete "
        "here; the same command copies them once the sink answers",
    )


def merge_if_last(job: Job, log: Any) -> bool:
    """A shard that finishes merges the run when every shard has finished (else says what is pending)."""
    assert job.selected is not None and job.shard is not None
    run_id, shard = job.selected.rundir.run_id, job.shard
    run_path = job.output / run_id
    if job.sink is not None:  # the other shards are in the sink, not on this machine
        from bench.run.sink import SinkError
        from bench.run.sync import download_run

        try:
            download_run(job.sink, run_id, job.output)
        except SinkError as exc:
            log.emit("merge_pending", run_id=run_id, message=f"shard {shard} done; not merged: {exc}")
            return False
    merged, pending = try_merge(run_path, lambda skipped: warn_skipped(log, skipped))
    if merged is not None and job.sink is not None:
        from bench.run.sink import SinkError
        from bench.run.sync import upload_tree

        try:
            upload_tree(job.sink, run_path, job.output, skip=(f"{run_id}/shards/",))
        except SinkError as exc:
            log.emit(
                "sync_failed", level="warning", message=f"merged here, not copied to {job.sink.url}: {exc}"
            )
    if merged is not None:
        log.emit(
            "run_merged",
            run_id=run_id,
            path=str(run_path),
            counts=merged.counts,
            message=f"all {shard.count} shards finished; merged into {run_path}",
        )
        return True
    log.emit(
        "merge_pending",
        run_id=run_id,
        pending=pending,
        message=f"shard {shard} done; not merged yet: " + "; ".join(pending),
    )
    return False


def push_once(run_path: Path, repo_id: str, private: bool, log: Any) -> bool:
    """Upload a finished run (once: run.json remembers it); False when the upload failed for good.

    A failed upload never touches the local results; the message says how to push later.
    """
    from bench.hub.push import PushError, push_run

    meta = read_meta(run_path)
    done = (meta.pushed if meta is not None else None) or {}
    if done.get("repo") == repo_id:
        log.emit(
            "push_skipped", repo=repo_id, message=f"already pushed to {repo_id}: {done.get('commit_url')}"
        )
        return True
    log.emit("push_started", repo=repo_id, message=f"pushing {run_path} to the Hub dataset {repo_id}")
    try:
        result = push_run(
            run_path,
            repo_id,
            private=private,
            log=log,
            warn=lambda skipped: warn_skipped(log, skipped, "not uploaded"),
        )
    except PushError as exc:
        log.emit("push_failed", level="error", repo=repo_id, exit_code=EXIT_PUSH_FAILED, message=str(exc))
        return False
    if meta is not None:
        pushed = {"repo": repo_id, "commit_url": result.commit_url, "at": now_iso()}
        atomic_write_json(run_path / "run.json", {**meta.to_dict(), "pushed": pushed})
    log.emit(
        "push_done",
        repo=repo_id,
        commit_url=result.commit_url,
        attempts=result.attempts,
        message=f"pushed to {result.repo_url} in one commit ({result.commit_url})",
    )
    return True
