"""Command line: `tfbench run`, `tfbench plan`, `tfbench presets`.

Mistakes in configs, flags or TFBENCH_* variables exit 2 with a message before any model is
loaded. This module and everything it imports stay free of torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import __version__
from bench.config.presets import PRESETS
from bench.config.schema import (
    ALLOWED,
    DEMO_CONFIG,
    NAME_RE,
    LoadedConfig,
    field_names,
    load_configs,
    parse_text_value,
)
from bench.errors import (
    EXIT_CELL_FAILED,
    EXIT_OK,
    EXIT_PUSH_FAILED,
    EXIT_SIGINT,
    EXIT_USAGE,
    ConfigNotFoundError,
    StorageError,
    UserError,
)
from bench.output.logs import LOG_FORMATS, HumanLog, JsonLog, log_format
from bench.plan.matrix import Capabilities, Plan, build_plan
from bench.run.machine import Accelerators, detect_accelerators, environment, is_installed, measured_commit
from bench.secrets import redacting_output

DEFAULT_CONFIG = Path(__file__).with_name("default_config.yaml")
DEFAULT_OUTPUT = "results"
RICH_PLAN_LIMIT = 500
BOOL_FIELDS = {"trust_remote_code", "compile_fullgraph", "gpu_monitoring", "push_private"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 itself; keep its usage line short
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"tfbench: error: {message}\n")


def _add_field_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config fields (override the file and TFBENCH_* variables)")
    for key in field_names():
        kwargs: dict[str, Any] = {"dest": f"field_{key}", "metavar": "VALUE", "help": ALLOWED.get(key)}
        if key in BOOL_FIELDS:
            kwargs.update(nargs="?", const="true")
        group.add_argument(f"--{key.replace('_', '-')}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tfbench", description="Benchmark Hugging Face transformers inference, cell by cell."
    )
    parser.add_argument("--version", action="version", version=f"tfbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run every cell of the config's matrix and write results")
    run.add_argument(
        "--config", "-c", help="config file or directory (default: TFBENCH_CONFIG, else the embedded default)"
    )
    run.add_argument(
        "--run-id", help="name of the run directory (default: TFBENCH_RUN_ID, else <UTC time>-<run_name>)"
    )
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="run shard I (from 0) of N (default: TFBENCH_SHARD, or JOB_COMPLETION_INDEX/TFBENCH_SHARD_COUNT)",
    )
    run.add_argument(
        "--log-format", choices=LOG_FORMATS, help="human (default) or json lines (TFBENCH_LOG_FORMAT)"
    )
    _add_field_flags(run)

    merge = sub.add_parser(
        "merge", help="merge the shards of a sharded run into one run, checking every cell is there once"
    )
    merge.add_argument("run_dir", metavar="RUN_DIR", help="<output>/<run id> of the sharded run")
    merge.add_argument(
        "--log-format", choices=LOG_FORMATS, help="human (default) or json lines (TFBENCH_LOG_FORMAT)"
    )

    compare = sub.add_parser(
        "compare",
        help="compare two runs cell by cell: ratios, intervals, regression verdicts (exit 1 on a regression)",
    )
    compare.add_argument(
        "base", metavar="BASE", help="the reference run: a directory, or hub:ORG/NAME@COMMIT"
    )
    compare.add_argument("new", metavar="NEW", help="the run to judge: a directory, or hub:ORG/NAME@COMMIT")
    compare.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    compare.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="[METRIC=]FRACTION",
        help="smallest change that counts (default 0.05); METRIC=FRACTION for one metric, repeatable",
    )
    compare.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    compare.add_argument(
        "--strict", action="store_true", help="also exit 1 when a cell ok in BASE is not ok in NEW"
    )
    compare.add_argument("--html", metavar="FILE", help="also write an HTML report with the ratio plots")
    compare.add_argument("--png", metavar="DIR", help="also write the ratio plots as PNG files")

    report = sub.add_parser("report", help="a run's summary table, and plots as HTML or PNG")
    report.add_argument("run_dir", metavar="RUN_DIR", help="<output>/<run id>")
    report.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    report.add_argument("--png", metavar="DIR", help="write the plots as PNG files")

    history = sub.add_parser("history", help="a metric of one cell across commits, with level shifts flagged")
    history.add_argument("source", nargs="?", metavar="DIR", help="a directory of run directories")
    history.add_argument("--repo", metavar="ORG/NAME", help="a Hub dataset that runs were pushed to")
    history.add_argument("--metric", required=True, help="e2e_latency, ttft, tpot, e2e_throughput, ...")
    history.add_argument("--cell", required=True, help="a cell id (or a unique prefix of 4+), or a cell name")
    history.add_argument("--hardware", help="keep runs whose hardware contains this (default: the newest's)")
    history.add_argument("--threshold", type=float, default=0.05, help="smallest shift that counts (0.05)")
    history.add_argument("--plot", metavar="FILE", help="also write the history as a PNG")
    history.add_argument("--format", choices=("text", "markdown", "json"), default="text")

    push = sub.add_parser("push", help="upload a run to a Hub dataset, as one commit")
    push.add_argument("run_dir", metavar="RUN_DIR", help="<output>/<run id>")
    push.add_argument(
        "--repo", required=True, metavar="ORG/NAME", help="the Hub dataset repo (created if missing)"
    )
    push.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    push.add_argument(
        "--log-format", choices=LOG_FORMATS, help="human (default) or json lines (TFBENCH_LOG_FORMAT)"
    )

    plan = sub.add_parser("plan", help="print the matrix: every cell, its id, and whether it runs or why not")
    plan.add_argument(
        "--config", "-c", help="config file or directory (default: TFBENCH_CONFIG, else the embedded default)"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="also show how N shards would split the cells (TFBENCH_SHARD=i/N)",
    )
    _add_field_flags(plan)

    sub.add_parser("presets", help="list the synthetic model presets")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for key in field_names():
        value = getattr(args, f"field_{key}", None)
        if value is not None:
            out[key] = parse_text_value(key, value)
    return out


def _configs(args: argparse.Namespace) -> list[LoadedConfig]:
    path = args.config or os.environ.get("TFBENCH_CONFIG") or None
    if path == DEMO_CONFIG and not Path(path).exists():
        path = None
    try:
        return load_configs(path, os.environ, _flags(args), default_path=DEFAULT_CONFIG)
    except ConfigNotFoundError as exc:
        raise ConfigNotFoundError(f"{exc} [from {'--config' if args.config else 'TFBENCH_CONFIG'}]") from None


def capabilities(config_device: str, accel: Accelerators, for_run: bool = True) -> Capabilities:
    """What the plan may assume. A run on cuda needs a GPU here; a plan for cuda may be made anywhere."""
    if config_device == "cuda" and not accel.cuda and for_run:
        raise UserError(
            f"device is cuda but no NVIDIA GPU is usable: {accel.reason}. "
            "In Docker, pass the GPUs with `docker run --gpus all ...`; or set device: cpu."
        )
    device = config_device if config_device != "auto" else ("cuda" if accel.cuda else "cpu")
    return Capabilities(device=device, flash_attn=is_installed("flash_attn"), kernels=is_installed("kernels"))


def _check_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".tfbench-write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"output directory {output} is not writable: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise UserError(f"output directory {str(output)!r} is not a usable path: {exc}") from None


def _run_id(args: argparse.Namespace, index: int, total: int) -> str | None:
    explicit = args.run_id or os.environ.get("TFBENCH_RUN_ID")
    if not explicit:
        return None
    if not NAME_RE.match(explicit):
        source = "--run-id" if args.run_id else "TFBENCH_RUN_ID"
        raise UserError(f"{source} = {explicit!r}: {ALLOWED['run_name']}")
    return explicit if total == 1 else f"{explicit}-{index + 1}"


def cmd_plan(args: argparse.Namespace, out: Console) -> int:
    from bench.output.tables import plan_lines, plan_table, shard_table
    from bench.plan.shard import assign, shard_summary

    if args.shards is not None and args.shards < 1:
        raise UserError(f"--shards = {args.shards}: allowed: an integer >= 1")
    configs = _configs(args)
    accel = detect_accelerators()
    plans: list[tuple[LoadedConfig, Plan]] = [
        (lc, build_plan(lc.config, capabilities(lc.config.device, accel, for_run=False))) for lc in configs
    ]
    for lc, plan in plans:
        if lc.config.device == "cuda" and not accel.cuda:
            plan.warnings.append(
                f"this machine has no usable GPU ({accel.reason}): the plan assumes one, "
                "with the flash-attn and kernels packages installed here"
            )

    def iterations(lc: LoadedConfig) -> int:
        return lc.config.warmup_iterations + lc.config.measurement_iterations

    if args.json:
        payload = [
            {"source": lc.source, "config": lc.config.as_given(), **plan.to_dict()} for lc, plan in plans
        ]
        if args.shards:
            for item, (lc, plan) in zip(payload, plans):
                owner = assign(plan.cells, args.shards, iterations(lc))
                for cell in item["cells"]:
                    cell["shard"] = owner[cell["cell_id"]]
                item["shards"] = shard_summary(plan.cells, args.shards, iterations(lc))
        big = sum(len(plan.cells) for _, plan in plans) > RICH_PLAN_LIMIT
        # Indentation triples the time to write a 10,000-cell plan; large plans are for machines.
        sys.stdout.write(
            json.dumps(payload if len(payload) > 1 else payload[0], indent=None if big else 1) + "\n"
        )
        return EXIT_OK
    for lc, plan in plans:
        title = f"{lc.config.model} on {plan.capabilities.device}"
        if len(plan.cells) <= RICH_PLAN_LIMIT:
            out.print(plan_table(plan, title))
        else:
            out.print(title, highlight=False)
            sys.stdout.write("\n".join(plan_lines(plan)) + "\n")
        out.print(
            f"{len(plan.cells)} cells: {len(plan.runnable)} to run, {len(plan.skipped)} skipped (config: {lc.source})",
            highlight=False,
        )
        if args.shards:
            out.print(shard_table(shard_summary(plan.cells, args.shards, iterations(lc))))
        for w in plan.warnings:
            out.print(f"[yellow]warning:[/yellow] {w}", soft_wrap=True)
    return EXIT_OK


def _settings(cfg: Any) -> Any:
    from bench.run.runner import Settings

    return Settings(
        warmup_iterations=cfg.warmup_iterations,
        measurement_iterations=cfg.measurement_iterations,
        seed=cfg.seed,
        trust_remote_code=cfg.trust_remote_code,
        gpu_monitoring=cfg.gpu_monitoring,
        cell_timeout_s=cfg.cell_timeout_s,
        max_attempts=cfg.max_attempts,
        gpu_sample_interval_s=cfg.gpu_sample_interval_s,
        cell_memory_limit_gb=cfg.cell_memory_limit_gb,
    )


def _exit_code(records: list[dict[str, Any]]) -> int:
    from bench.run.runner import FAILED_STATUSES

    return EXIT_CELL_FAILED if any(r["status"] in FAILED_STATUSES for r in records) else EXIT_OK


@dataclass
class Job:
    """One config's run as prepared before anything runs: its plan, where it goes, how it resumes."""

    loaded: LoadedConfig
    full: Plan  # the whole matrix (what a shard's merge checks against)
    plan: Plan  # the cells this process runs (a shard's share, or all)
    output: Path
    run_id: str | None
    settings: Any
    key: dict[str, Any]
    shard: Any = None
    selected: Any = None


def cmd_run(args: argparse.Namespace, out: Console, err: Console, log: Any) -> int:
    from bench.plan.shard import parse_shard, shard_plan
    from bench.run.resume import hardware_signature, identity, select_run
    from bench.run.runner import new_run_id

    configs = _configs(args)
    shard = parse_shard(os.environ, args.shard)
    accel = detect_accelerators()
    env = environment(accel)
    jobs: list[Job] = []
    # Every config is checked before the first cell runs: a bad line 3 must not cost lines 1-2.
    for i, lc in enumerate(configs):
        cfg = lc.config
        try:
            caps = capabilities(cfg.device, accel)
        except UserError as exc:
            raise UserError(f"{exc}{_origin(lc, 'device')}") from None
        full = build_plan(cfg, caps)
        iterations = cfg.warmup_iterations + cfg.measurement_iterations
        plan = shard_plan(full, shard, iterations) if shard else full
        output = Path(cfg.output or DEFAULT_OUTPUT)
        run_id = _run_id(args, i, len(configs))  # before the output is made: a bad id creates nothing
        if cfg.push_to_hub:
            from bench.hub.push import check_push_config

            try:  # a token and a reachable Hub, before any model loads
                check_push_config(cfg.push_to_hub)
            except UserError as exc:
                raise UserError(f"{exc}{_origin(lc, 'push_to_hub')}") from None
        if shard and run_id is None:
            raise UserError(
                f"shard {shard} ({_shard_source(args)}): a sharded run needs TFBENCH_RUN_ID (or --run-id), "
                "the same on every shard, so that the shards write one run"
            )
        measured = {
            "warmup_iterations": cfg.warmup_iterations,
            "measurement_iterations": cfg.measurement_iterations,
            "seed": cfg.seed,
        }
        key = identity(
            full, measured, hardware_signature(env, full.capabilities.device), shard and shard.name
        )
        jobs.append(Job(lc, full, plan, output, run_id, _settings(cfg), key, shard))
    for job in jobs:  # only once every check passed: a refused run creates nothing
        _check_output(job.output)
    # Then claim the run directories (continuing unfinished runs); each stays locked while it runs.
    try:
        for job in jobs:
            name, output = job.loaded.config.run_name, job.output
            job.selected = select_run(
                output,
                job.run_id,
                shard and shard.name,
                name,
                job.key,
                job.plan,
                lambda name=name, output=output: new_run_id(name, output),
            )
        commit = measured_commit()
        worst = EXIT_OK
        for job in jobs:
            code = _run_one(job, env, commit, out, err, log)
            job.selected.lock.release()
            if code not in (EXIT_OK, EXIT_CELL_FAILED):
                return code  # interrupted: stop here, later configs are not started
            worst = max(worst, code)
        return worst
    finally:
        for job in jobs:
            if job.selected is not None:
                job.selected.lock.release()


def _run_meta(job: Job, env: dict[str, Any], commit: Any) -> dict[str, Any]:
    """run.json of a new run, or of the continued one with this invocation added."""
    from bench.run.runner import now_iso

    sel, shard, cfg = job.selected, job.shard, job.loaded.config
    invocation = {"started_at": now_iso(), "hostname": env.get("hostname"), "pid": os.getpid()}
    if sel.meta is not None:
        meta = dict(sel.meta)
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
    return meta


def _merge_if_last(job: Job, log: Any) -> bool:
    """A shard that finishes merges the run when every shard has finished (else says what is pending)."""
    from bench.run.merge import try_merge

    run_id, shard = job.selected.rundir.run_id, job.shard
    run_path = job.output / run_id
    merged, pending = try_merge(run_path, lambda skipped: warn_skipped(log, skipped))
    if merged is not None:
        log.emit(
            "run_merged",
            run_id=run_id,
            path=str(run_path),
            counts=merged["counts"],
            message=f"all {shard.count} shards finished; merged into {run_path}",
        )
        return True
    else:
        log.emit(
            "merge_pending",
            run_id=run_id,
            pending=pending,
            message=f"shard {shard} done; not merged yet: " + "; ".join(pending),
        )
        return False


def warn_skipped(log: Any, skipped: Any, action: str = "skipped") -> None:
    """One warning per file in a cells/ directory that is not a cell record (a Skipped)."""
    log.emit(
        "foreign_file",
        level="warning",
        path=str(skipped.path),
        reason=skipped.reason,
        message=f"{skipped.path}: {skipped.reason}; {action}",
    )


def _set_aside(job: Job, log: Any) -> None:
    """Name every file in the run's cells/ that is not a record; move aside the ones that sit where
    a planned cell's record belongs, before that cell runs again and its record is written there."""
    sel = job.selected
    planned = {sel.rundir.cell_path(c.cell_id) for c in job.plan.cells}
    for skipped in sel.skipped:
        if sel.finished or skipped.path not in planned:
            warn_skipped(log, skipped)
            continue
        dest = sel.rundir.quarantine(skipped.path)
        warn_skipped(log, skipped, f"moved to {dest}; the cell is done again")


def _run_one(job: Job, env: dict[str, Any], commit: Any, out: Console, err: Console, log: Any) -> int:
    from bench.output.logs import JsonReporter
    from bench.output.tables import ProgressReporter, print_summary
    from bench.results.store import status_counts
    from bench.run.runner import Runner

    sel, shard, plan, cfg = job.selected, job.shard, job.plan, job.loaded.config
    rundir = sel.rundir
    run_id = rundir.run_id
    label = run_id + (f" shard {shard}" if shard else "")
    device = plan.capabilities.device
    _set_aside(job, log)
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
        code = _exit_code(records)
    else:
        settled = sum(1 for r in sel.records.values() if r["status"] in ("ok", "skipped"))
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
        runner = Runner(
            rundir, plan, job.settings, _run_meta(job, env, commit), reporter, previous=sel.records
        )
        code = runner.execute()
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
        merged = _merge_if_last(job, log)
        if merged and cfg.push_to_hub:
            pushed = _push(job.output / run_id, cfg.push_to_hub, cfg.push_private, log)
    elif cfg.push_to_hub:
        pushed = _push(rundir.path, cfg.push_to_hub, cfg.push_private, log)
    return code if pushed else EXIT_PUSH_FAILED


def _push(run_path: Path, repo_id: str, private: bool, log: Any) -> bool:
    """Upload a finished run (once: run.json remembers it); False when the upload failed for good.

    A failed upload never touches the local results; the message says how to push later.
    """
    from bench.hub.push import PushError, push_run
    from bench.results.store import atomic_write_json
    from bench.run.resume import read_run
    from bench.run.runner import now_iso

    meta = read_run(run_path) or {}
    done = meta.get("pushed") or {}
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
    meta["pushed"] = {"repo": repo_id, "commit_url": result.commit_url, "at": now_iso()}
    atomic_write_json(run_path / "run.json", meta)
    log.emit(
        "push_done",
        repo=repo_id,
        commit_url=result.commit_url,
        attempts=result.attempts,
        message=f"pushed to {result.repo_url} in one commit ({result.commit_url})",
    )
    return True


def _thresholds(items: list[str]) -> dict[str, float]:
    from bench.analysis.compare import METRICS

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            fraction = float(value)
        except ValueError:
            raise UserError(f"--threshold {item!r}: FRACTION must be a number, e.g. 0.05") from None
        for metric in [name] if sep else METRICS:
            if metric not in METRICS:
                raise UserError(
                    f"--threshold {item!r}: unknown metric {metric!r}; allowed: {', '.join(METRICS)}"
                )
            out[metric] = fraction
    return out


def _load_run(source: str, log: Any) -> Any:
    """A run for compare or report; files in its cells/ that are not records are named and skipped."""
    from bench.analysis.compare import load_run

    run = load_run(source)
    for skipped in run.skipped:
        warn_skipped(log, skipped)
    return run


def cmd_compare(args: argparse.Namespace, out: Console, log: Any) -> int:
    from bench.analysis.compare import compare_runs, exit_code, to_json, to_markdown, to_table

    base, new = _load_run(args.base, log), _load_run(args.new, log)
    cmp = compare_runs(base, new, _thresholds(args.threshold), args.alpha)
    if args.format == "json":
        sys.stdout.write(json.dumps(to_json(cmp), indent=1) + "\n")
    elif args.format == "markdown":
        sys.stdout.write(to_markdown(cmp) + "\n")
    else:
        out.print(to_table(cmp))
    if args.html or args.png:
        from bench.output.plots import write_compare_report

        for path in write_compare_report(cmp, args.html, args.png):
            sys.stderr.write(f"wrote {path}\n")
    return exit_code(cmp, strict=args.strict)


def cmd_report(args: argparse.Namespace, out: Console, log: Any) -> int:
    from bench.output.tables import print_summary

    run = _load_run(args.run_dir, log)
    records = list(run.cells.values())
    print_summary(out, records, title=f"{run.meta.get('run_id')}")
    if args.html or args.png:
        from bench.output.plots import write_run_report

        for path in write_run_report(run, args.html, args.png):
            sys.stderr.write(f"wrote {path}\n")
    return EXIT_OK


def cmd_history(args: argparse.Namespace, log: Any) -> int:
    from bench.analysis.history import history

    text, code = history(
        args.source,
        args.repo,
        args.metric,
        args.cell,
        hardware=args.hardware,
        threshold=args.threshold,
        plot_path=Path(args.plot) if args.plot else None,
        fmt=args.format,
        warn=lambda skipped: warn_skipped(log, skipped, "left out"),
    )
    sys.stdout.write(text if text.endswith("\n") else text + "\n")  # not rich: "[1.09, 1.11]" is text
    return code


def cmd_push(args: argparse.Namespace, log: Any) -> int:
    from bench.hub.push import check_push_config

    run_path = Path(args.run_dir)
    if not (run_path / "run.json").is_file():
        raise UserError(f"{run_path} is not a run directory (no run.json); give <output>/<run id>")
    repo = check_push_config(args.repo)
    return EXIT_OK if _push(run_path, repo, not args.public, log) else EXIT_PUSH_FAILED


def cmd_merge(args: argparse.Namespace, out: Console, log: Any) -> int:
    from bench.output.tables import print_summary
    from bench.run.merge import merge

    run_path = Path(args.run_dir)
    if not run_path.is_dir():
        raise UserError(f"{run_path} is not a directory; give <output>/<run id> of a sharded run")
    merged, records = merge(run_path, warn=lambda skipped: warn_skipped(log, skipped))
    if log.human:
        print_summary(out, records, title=f"{merged['run_id']} (merged)")
    text = ", ".join(f"{v} {k}" for k, v in sorted(merged["counts"].items()) if v)
    log.emit(
        "run_merged",
        run_id=merged["run_id"],
        path=str(run_path),
        counts=merged["counts"],
        message=f"merged {merged['shard_count']} shards into {run_path} ({text})",
    )
    return EXIT_OK


def cmd_presets(out: Console) -> int:
    from rich.table import Table

    table = Table(title="synthetic presets (model: synthetic:<name>)", header_style="bold")
    table.add_column("name")
    table.add_column("architecture")
    table.add_column("description")
    for p in PRESETS.values():
        table.add_row(p.name, p.architecture, p.description)
    out.print(table)
    return EXIT_OK


# Paths the tools read, by subcommand: (attribute, how the usage line names it).
_PATH_ARGS = {
    "compare": (("base", "BASE"), ("new", "NEW")),
    "report": (("run_dir", "RUN_DIR"),),
    "history": (("source", "DIR"),),
    "merge": (("run_dir", "RUN_DIR"),),
    "push": (("run_dir", "RUN_DIR"),),
}


def _check_paths(args: argparse.Namespace) -> None:
    """A path the system cannot even look up (a name too long, a NUL) is a mistake in the command
    line: exit 2 naming it, before any code reads it. A missing path is left to the command,
    which says what it expected there."""
    for attr, name in _PATH_ARGS.get(args.command, ()):
        value = getattr(args, attr, None)
        if not value or (value.startswith("hub:") and args.command in ("compare", "report")):
            continue  # a run on the Hub, checked when it is read
        try:
            os.stat(value)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except (OSError, ValueError) as exc:
            shown = value if len(value) <= 200 else value[:200] + "..."
            raise UserError(f"{name} {shown!r}: {getattr(exc, 'strerror', None) or exc}") from None


def _origin(lc: LoadedConfig, key: str) -> str:
    return f" [{key} from {lc.origins[key]}]" if key in lc.origins else ""


def _shard_source(args: argparse.Namespace) -> str:
    if args.shard:
        return "--shard"
    return "TFBENCH_SHARD" if os.environ.get("TFBENCH_SHARD") else "JOB_COMPLETION_INDEX/TFBENCH_SHARD_COUNT"


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever is printed (messages, tables, library warnings) passes redaction: no token leaves.
    with redacting_output():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Logs of containers and CI are not terminals; rich would wrap them at 80 columns.
    out = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    log: Any = HumanLog(err)
    try:
        log = JsonLog() if log_format(os.environ, getattr(args, "log_format", None)) == "json" else log
        _check_paths(args)
        if args.command == "plan":
            return cmd_plan(args, out)
        if args.command == "run":
            return cmd_run(args, out, err, log)
        if args.command == "merge":
            return cmd_merge(args, out, log)
        if args.command == "push":
            return cmd_push(args, log)
        if args.command == "compare":
            return cmd_compare(args, out, log)
        if args.command == "report":
            return cmd_report(args, out, log)
        if args.command == "history":
            return cmd_history(args, log)
        return cmd_presets(out)
    except (UserError, StorageError) as exc:
        log.emit("error", level="error", exit_code=exc.exit_code, message=str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        log.emit("interrupted", level="error", exit_code=EXIT_SIGINT, message="interrupted")
        return EXIT_SIGINT
    except _SHAPE_ERRORS as exc:
        if args.command not in _PATH_ARGS:
            raise
        log.emit("error", level="error", exit_code=EXIT_USAGE, message=_not_as_written(args, exc))
        return EXIT_USAGE


# What reading results that are not shaped as tfbench writes them raises (a number where a
# mapping belongs, a key missing, a file nested past the stack).
_SHAPE_ERRORS = (TypeError, AttributeError, KeyError, ValueError, IndexError, ArithmeticError, RecursionError)


def _not_as_written(args: argparse.Namespace, exc: BaseException) -> str:
    """The tools read results files that a person or another program may have changed: a value of
    the wrong shape there is exit 2 naming the input, with where it broke (no traceback)."""
    given = [str(v) for attr, _ in _PATH_ARGS[args.command] if (v := getattr(args, attr, None))]
    given += [f"hub dataset {args.repo}"] if getattr(args, "repo", None) and args.command == "history" else []
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}bench{os.sep}" in f.filename]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    text = str(exc)
    text = text if len(text) <= 200 else text[:200] + "..."
    return (
        f"the results in {', '.join(given) or 'the input'} are not as tfbench writes them "
        f"(changed by hand or by another program?): {type(exc).__name__}: {text}{where}"
    )


if __name__ == "__main__":
    sys.exit(main())
