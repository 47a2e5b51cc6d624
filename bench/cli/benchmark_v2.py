"""`tfbench v2`: transformers' benchmark_v2/run_benchmarks.py command line, run by tfbench's engine.

The same flags, defaults and meaning (docs/compat/benchmark_v2.md, section 1). The cells run as
every tfbench cell does: a fresh process each, timeouts, resume, skip with reasons. Beside the
run directory, benchmark_v2's own results file is written (and rewritten when a stopped run
continues), and --push-result-to-dataset pushes its two JSONL files in one commit.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from bench.config import benchmark_v2 as v2
from bench.config.schema import LoadedConfig
from bench.config.sources import read_env, validate
from bench.errors import EXIT_CELL_FAILED, EXIT_OK, EXIT_PUSH_FAILED, UserError
from bench.plan.matrix import build_plan
from bench.results import benchmark_v2 as v2_results
from bench.results.store import Run, atomic_write_json, open_run
from bench.run.machine import Accelerators, capabilities, detect_accelerators
from bench.run.session import RunRequest, run_configs

DEFAULT_OUTPUT_DIR = "benchmark_results"  # benchmark_v2 writes to benchmark_v2/benchmark_results
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_v2_parser(sub: Any) -> None:
    p = sub.add_parser(
        "v2",
        help="transformers' benchmark_v2 command line (run_benchmarks.py flags), run by tfbench",
        description="Runs benchmark_v2's configs cell by cell in fresh processes; writes tfbench's run "
        "directory and benchmark_v2's results file beside it.",
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="where results go (default: TFBENCH_OUTPUT, else benchmark_results)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, default="WARNING", help="Python logging level")
    p.add_argument("--model-id", help="the model to benchmark (a Hub id or a local directory)")
    p.add_argument("--warmup", "-w", type=int, default=v2.DEFAULT_WARMUP, help="warm-up iterations (3)")
    p.add_argument(
        "--iterations", "-i", type=int, default=v2.DEFAULT_ITERATIONS, help="timed iterations (10)"
    )
    p.add_argument("--batch-size", "-b", type=int, nargs="+", help="batch sizes")
    p.add_argument("--sequence-length", "-s", type=int, nargs="+", help="prompt lengths in tokens")
    p.add_argument("--num-tokens-to-generate", "-n", type=int, nargs="+", help="new tokens (each > 1)")
    p.add_argument(
        "--level", type=int, default=v2.DEFAULT_LEVEL, help="coverage level without a config file (1)"
    )
    p.add_argument("--config-file", help="a .json config or .jsonl configs (either generation)")
    p.add_argument(
        "--num-tokens-to-profile",
        "-p",
        type=int,
        default=0,
        help="one profiled generate call of this many tokens per cell, after its timed runs (tfbench's `profile`)",
    )
    p.add_argument(
        "--enable-tp", action="store_true", help="tensor parallelism (not measured by tfbench yet)"
    )
    p.add_argument("--branch-name", help="into the results' metadata")
    p.add_argument("--commit-id", help="the measured commit (default: what tfbench finds)")
    p.add_argument("--commit-message", help="into the results' metadata")
    p.add_argument("--no-gpu-monitoring", action="store_true", help="turn GPU monitoring off")
    p.add_argument(
        "--push-result-to-dataset", metavar="ORG/NAME", help="an existing Hub dataset (PUSH_TO_HUB_TOKEN)"
    )
    p.add_argument("--run-id", help="tfbench's run id (default: TFBENCH_RUN_ID, else a new one)")
    p.add_argument("--log-format", choices=("human", "json"), help="human (default) or json lines")


def _required(args: argparse.Namespace) -> None:
    if not args.model_id:
        raise UserError("--model-id is required: the Hub id or local directory of the model to benchmark")
    missing = [
        flag
        for flag, value in (
            ("--batch-size/-b", args.batch_size),
            ("--sequence-length/-s", args.sequence_length),
            ("--num-tokens-to-generate/-n", args.num_tokens_to_generate),
        )
        if not value
    ]
    if missing:
        raise UserError(
            f"{', '.join(missing)} required: benchmark_v2 needs -b, -s and -n, each with one or more values"
        )
    if args.enable_tp:
        raise UserError(
            "--enable-tp: tensor-parallel cells are not mapped from benchmark_v2's flag; run without it, or "
            "measure them with tfbench's tp_size (the README's benchmark_v2 table lists what differs)"
        )


def load_v2_config(
    args: argparse.Namespace, accel: Accelerators, log: Any
) -> tuple[LoadedConfig, v2.V2Matrix]:
    """The tfbench config of a benchmark_v2 command line (TFBENCH_* variables still apply), and
    its matrix; every mistake exits 2 before anything runs."""
    _required(args)
    kernels = capabilities("auto", accel, for_run=False).kernels
    config_file = Path(args.config_file) if args.config_file else None
    if config_file is not None and not config_file.is_file():
        raise UserError(f"--config-file {config_file}: no such file")
    matrix = v2.matrix(
        config_file,
        args.level,
        args.warmup,
        args.iterations,
        args.batch_size,
        args.sequence_length,
        args.num_tokens_to_generate,
        not args.no_gpu_monitoring,
        kernels,
    )
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key, (var, value) in read_env(os.environ).items():
        merged[key], origins[key] = value, f"env {var}"
    for key, value in v2.bench_config(matrix, args.model_id).items():
        merged[key], origins[key] = value, "the benchmark_v2 flags"
    if args.num_tokens_to_profile:
        # A negative count is validated like TFBENCH_PROFILE: exit 2 naming the field.
        merged["profile"], origins["profile"] = args.num_tokens_to_profile, "flag --num-tokens-to-profile"
    if args.output_dir:
        merged["output"], origins["output"] = args.output_dir, "flag --output-dir"
    merged.setdefault("output", DEFAULT_OUTPUT_DIR)
    label = f"benchmark_v2 flags ({args.config_file or f'level {args.level}'})"
    if merged.get("tp_size", 1) not in (1, [1]):
        # benchmark_v2's results file names its configs without tensor parallelism (no_tp only
        # with --enable-tp, which is not mapped): a tp cell would be written as another config.
        raise UserError(
            f"TFBENCH_TP_SIZE = {merged['tp_size']!r}: tfbench v2 measures without tensor parallelism, "
            "as benchmark_v2 does without --enable-tp; use a tfbench config with tp_size"
        )
    for note in matrix.notes:
        log.emit("v2_note", level="warning", message=note)
    return validate(merged, origins, label), matrix


def say_rewrites(lc: LoadedConfig, matrix: v2.V2Matrix, accel: Accelerators, log: Any) -> None:
    """One line per config that benchmark_v2 would have rewritten, and what tfbench does instead."""
    plan = build_plan(lc.config, capabilities(lc.config.device, accel, for_run=False))
    caps = plan.capabilities
    reasons = {
        (c.attn_implementation, c.compile, c.kernelize, c.continuous_batching): c.skip_reason
        for c in plan.cells
    }
    for combo in dict.fromkeys(matrix.combos):
        lines = v2.rewrites(combo, caps.flash_attn, caps.kernels, caps.device)
        if not lines:
            continue
        reason = reasons.get(
            (combo.attn_implementation, combo.compile, combo.kernelize, combo.continuous_batching)
        )
        instead = f"tfbench skips it: {reason}" if reason else "tfbench measures it as asked"
        name = v2.infer_name(combo, matrix.shapes[0], matrix.tp)
        log.emit(
            "v2_rewrite",
            level="warning",
            config=name,
            message=f"benchmark_v2 would rewrite {name}: {'; '.join(lines)}; {instead}",
        )


def write_v2_file(
    run: Run, summarized: dict[str, Any], args: argparse.Namespace, meta: dict[str, Any], log: Any
) -> None:
    """benchmark_v2's results file of a run; its name goes into `meta` (the run's run.json)."""
    path = v2_results.results_path(
        run.path.parent, args.model_id, v2_results.file_timestamp(run.meta.started_at)
    )
    v2_results.write_results_file(path, summarized)
    meta["benchmark_v2_file"] = path.name
    log.emit(
        "v2_results_written",
        path=str(path),
        configs=len(summarized),
        message=f"benchmark_v2 results: {path} ({len(summarized)} configs; {v2_results.DECODED_OUTPUTS_NOTE})",
    )


def push_v2(
    run: Run, common: tuple[Any, ...], summarized: dict[str, Any], repo: str, meta: dict[str, Any], log: Any
) -> bool:
    """benchmark_v2's two JSONL files of a finished run, pushed once (`meta`, the run's run.json,
    remembers it)."""
    from bench.hub.benchmark_v2_push import push_v2_files
    from bench.hub.commit import PushError

    done = meta.get("benchmark_v2_pushed") or {}
    if done.get("repo") == repo:
        log.emit("push_skipped", repo=repo, message=f"already pushed to {repo}: {done.get('commit_url')}")
        return True
    files = v2_results.hub_files(
        v2_results.entries(*common, full=True), summarized, v2_results.file_timestamp(run.meta.started_at)
    )
    try:
        result = push_v2_files(
            repo, files, log=log, later=f"the same `tfbench v2 ... --run-id {run.run_id}` command"
        )
    except PushError as exc:
        log.emit("push_failed", level="error", repo=repo, exit_code=EXIT_PUSH_FAILED, message=str(exc))
        return False
    meta["benchmark_v2_pushed"] = {"repo": repo, "commit_url": result.commit_url, "files": list(files)}
    log.emit(
        "push_done",
        repo=repo,
        message=f"pushed {', '.join(files)} to {repo} in one commit ({result.commit_url})",
    )
    return True


def write_outputs(
    run_path: Path, matrix: v2.V2Matrix, args: argparse.Namespace, push: bool, log: Any
) -> bool:
    """After an invocation: the run read once, its benchmark_v2 file written, pushed when asked
    (benchmark_v2 pushes only when there is a result); False when the push failed."""
    run = open_run(run_path)
    commit = args.commit_id or run.meta.commit_sha
    common = (matrix, run.records(), run.meta, args.model_id, args.branch_name, commit, args.commit_message)
    summarized = v2_results.entries(*common)
    if not summarized:
        return True
    meta = run.meta.to_dict()
    write_v2_file(run, summarized, args, meta, log)
    pushed = not push or push_v2(run, common, summarized, args.push_result_to_dataset, meta, log)
    atomic_write_json(run_path / "run.json", meta)
    return pushed


def cmd_v2(args: argparse.Namespace, out: Any, err: Any, log: Any) -> int:
    logging.getLogger().setLevel(args.log_level)
    accel = detect_accelerators()
    lc, matrix = load_v2_config(args, accel, log)
    if args.push_result_to_dataset:
        from bench.hub.benchmark_v2_push import check_v2_push_config

        check_v2_push_config(args.push_result_to_dataset)
    say_rewrites(lc, matrix, accel, log)
    commit = (
        {"sha": args.commit_id, "source": "--commit-id", "branch": args.branch_name}
        if args.commit_id
        else None
    )
    finished: list[Path] = []
    request = RunRequest(
        run_id=args.run_id or os.environ.get("TFBENCH_RUN_ID") or None,
        run_id_source="--run-id" if args.run_id else "TFBENCH_RUN_ID",
        commit=commit,
        after=finished.append,
    )
    code = run_configs([lc], request, out, err, log)
    finished_ok = code in (EXIT_OK, EXIT_CELL_FAILED)
    for run_path in finished:
        if not write_outputs(run_path, matrix, args, finished_ok and bool(args.push_result_to_dataset), log):
            return EXIT_PUSH_FAILED
    return code
