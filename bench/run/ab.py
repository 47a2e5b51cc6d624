"""`tfbench ab BASE NEW`: two versions of transformers measured on one machine, interleaved, then compared.

Two runs made at different times differ by the machine's drift as well as by the code; on a shared
VM whole runs move by several percent. Measured in one invocation, with every (cell, process) step
of BASE next to the same step of NEW, both sides see the same drift, and the comparison needs no
run-level variance (bench.analysis.compare: both runs carry the same `ab` id).

Each side is a config run of its own (bench.run.session), with `transformers_source` set to its
source, so its side server imports that transformers: two runs, two run directories, two
identities, each resumable. The steps alternate ABBA (base new, new base, ...), so that neither
side always goes first after the other, or in an order drawn from the seed (`--order shuffled`).
Both sides must plan the same cells with the same torch; otherwise the two would not differ in
transformers alone, and that is bad input (exit 2) before any model loads.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.config.schema import LoadedConfig
from bench.errors import EXIT_CELL_FAILED, EXIT_OK, EXIT_PUSH_FAILED, StorageError, UserError
from bench.output.logs import JsonReporter
from bench.output.tables import ProgressReporter
from bench.run.machine import detect_accelerators, environment
from bench.run.resume import Selected
from bench.run.runner import Runner
from bench.run.session import Job, RunRequest, claim, job_run_id, prepare, push_once, run_meta, set_aside
from bench.run.side import side_commit

SIDES = ("base", "new")
_DONE = object()
ORDERS = ("abba", "shuffled")


@dataclass
class AbResult:
    """The two runs an `ab` wrote (or continued), and the runners' worst exit code."""

    base: Path
    new: Path
    code: int


def side_configs(lc: LoadedConfig, base: str, new: str) -> list[LoadedConfig]:
    """The config once per side, each measuring its own transformers."""
    if lc.config.transformers_source:
        raise UserError(
            f"transformers_source = {lc.config.transformers_source!r}"
            f" [from {lc.origins.get('transformers_source', 'the config')}]: "
            "`tfbench ab` measures BASE and NEW; leave transformers_source unset"
        )
    if lc.config.sync_to:
        raise UserError(
            f"sync_to = {lc.config.sync_to!r} [from {lc.origins.get('sync_to', 'the config')}]: "
            "`tfbench ab` keeps its two runs on this machine; leave sync_to unset (copy them with `tfbench push`)"
        )
    out = []
    for name, given in zip(("BASE", "NEW"), (base, new)):
        # Each side's runs are named apart (<run_name>-base, -new), so each resumes its own.
        update = {"transformers_source": given, "run_name": f"{lc.config.run_name}-{name.lower()}"}
        cfg = lc.config.model_copy(update=update)
        origins = {**lc.origins, "transformers_source": f"tfbench ab {name}"}
        out.append(replace(lc, config=cfg, origins=origins))
    return out


def check_same(base: Job, new: Job) -> None:
    """Both sides must run the same plan with the same torch: otherwise the A/B is not of transformers."""
    torches = [job.workers.facts.get("torch") for job in (base, new)]
    if torches[0] != torches[1]:
        raise UserError(
            f"BASE imports torch {torches[0]}, NEW torch {torches[1]}: an A/B must differ in "
            "transformers only; give both sides environments with the same torch"
        )

    def cells(job: Job) -> dict[str, str | None]:
        return {c.cell_id: None if c.runnable else c.skip_reason for c in job.full.cells}

    a, b = cells(base), cells(new)
    if a != b:
        differ = sorted(cid for cid in a.keys() | b.keys() if a.get(cid, "absent") != b.get(cid, "absent"))
        shown = "; ".join(
            f"{cid[:8]}: BASE {_plan_word(a, cid)}, NEW {_plan_word(b, cid)}" for cid in differ[:5]
        )
        raise UserError(
            f"BASE and NEW plan different cells ({len(differ)} differ: {shown}); their environments "
            "differ in what they offer (flash-attn, kernels): give both sides the same packages"
        )


def _plan_word(cells: dict[str, str | None], cid: str) -> str:
    if cid not in cells:
        return "has no such cell"
    reason = cells[cid]
    return "runs it" if reason is None else f"skips it ({reason})"


def step_order(order: str, seed: int) -> Iterator[tuple[int, int]]:
    """Which side goes first at each step: ABBA, or drawn from the seed."""
    draw = random.Random(seed)
    k = 0
    while True:
        first = draw.randrange(2) if order == "shuffled" else k % 2
        yield (first, 1 - first)
        k += 1


def interleave(runners: list[Runner], order: str, seed: int) -> None:
    """Advance the runners' steps alternately until both are done."""
    steps = [r.steps() for r in runners]
    live = [True, True]
    try:
        for pair in step_order(order, seed):
            if not any(live):
                return
            for i in pair:
                if live[i]:
                    live[i] = next(steps[i], _DONE) is not _DONE
    finally:
        for s in steps:
            s.close()  # a side cut short still closes its progress display


def run_ab(
    lc: LoadedConfig,
    base: str,
    new: str,
    request: RunRequest,
    order: str,
    out: Any,
    err: Any,
    log: Any,
) -> AbResult:
    """Measure both sides interleaved into two runs; the comparison is the caller's."""
    if order not in ORDERS:
        raise UserError(f"--order = {order!r}: allowed: {', '.join(ORDERS)}")
    pair = job_run_id(request, 0, 1)  # a bad name exits 2 before anything starts
    accel = detect_accelerators()
    env = environment(accel)
    jobs = prepare(side_configs(lc, base, new), RunRequest(), accel, env, source_labels=("BASE", "NEW"))
    try:
        check_same(*jobs)
        for name, job in zip(SIDES, jobs):
            job.run_id = f"{pair}-{name}" if pair else None
            job.key = {**job.key, "ab_side": name}  # two copies of one source are still two sides
            claim(job, log)
        done = _measure(jobs, env, order, lc.config.seed, err, log)
        cfg = jobs[0].loaded.config
        if cfg.push_to_hub and done.code in (EXIT_OK, EXIT_CELL_FAILED):
            # Both sides, as any finished run is pushed; a failed upload keeps the results (exit 3).
            pushed = [
                push_once(path, cfg.push_to_hub, cfg.push_private, log) for path in (done.base, done.new)
            ]
            if not all(pushed):
                done.code = EXIT_PUSH_FAILED
        return done
    finally:
        for job in jobs:
            if job.selected is not None:
                job.selected.lock.release()
            job.workers.close()


def ab_id(selected: list[Selected]) -> str:
    """The id both runs carry: the one a continued side already has, else BASE's run id."""
    for sel in selected:
        tag = (sel.meta.model_extra or {}).get("ab") if sel.meta is not None else None
        if isinstance(tag, dict) and tag.get("id"):
            return str(tag["id"])
    return selected[0].rundir.run_id


def _measure(jobs: list[Job], env: dict[str, Any], order: str, seed: int, err: Any, log: Any) -> AbResult:
    selected = [job.selected for job in jobs if job.selected is not None]
    assert len(selected) == len(SIDES)
    pair_id, run_ids = ab_id(selected), [s.rundir.run_id for s in selected]
    runners: list[Runner] = []
    shared = None
    for name, job, sel in zip(SIDES, jobs, selected):
        set_aside(job, log)
        meta = run_meta(job, job.env or env, side_commit(job.workers))
        tag = {"id": pair_id, "side": name, "order": order, "runs": run_ids}
        meta = meta.model_copy(update={"ab": tag})
        if log.human:
            reporter = ProgressReporter(err, f"{name}: {sel.rundir.run_id}", progress=shared, tag=name)
            shared = shared or reporter.progress
        else:
            reporter = JsonReporter(log, sel.rundir.run_id)
        runner = Runner(
            sel.rundir, job.plan, job.settings, meta, reporter, previous=sel.records, workers=job.workers
        )
        runners.append(runner)
        log.emit(
            "run_started",
            run_id=sel.rundir.run_id,
            path=str(sel.rundir.path),
            side=name,
            message=f"{name.upper()}: {job.workers.source.given} (transformers "
            f"{job.workers.facts.get('transformers')}) -> {sel.rundir.path}",
        )
    codes = _together(runners, order, seed)
    interrupted = [c for c in codes if c not in (EXIT_OK, EXIT_CELL_FAILED)]
    return AbResult(
        selected[0].rundir.path, selected[1].rundir.path, interrupted[0] if interrupted else max(codes)
    )


def _together(runners: list[Runner], order: str, seed: int) -> list[int]:
    """Run both sides' steps interleaved, with one signal handler and one storage failure path."""

    def on_signal(signum: int, frame: Any) -> None:
        for r in runners:
            r.on_signal(signum, frame)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for r in runners:
            r.begin()
        interleave(runners, order, seed)
        return [r.end() for r in runners]
    except StorageError as exc:
        failed = [r.storage_failed(exc) for r in runners]
        raise failed[0] from exc
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)
