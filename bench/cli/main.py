"""Command line: the parser, and `tfbench run`, `plan`, `merge`, `push`, `report`, `history`,
`presets` (the verdict commands are in bench.cli.verdicts).

Mistakes in configs, flags or TFBENCH_* variables exit 2 with a message before any model is
loaded. This module and everything it imports stay free of torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import __version__
from bench.cli.benchmark_v2 import add_v2_parser, cmd_v2
from bench.cli.inputs import load_config_args, load_run
from bench.cli.verdicts import add_verdict_flags, cmd_ab, cmd_calibrate, cmd_compare
from bench.config.presets import PRESETS
from bench.config.schema import ALLOWED, LoadedConfig, field_names
from bench.errors import (
    EXIT_OK,
    EXIT_PUSH_FAILED,
    EXIT_SIGINT,
    EXIT_USAGE,
    StorageError,
    UserError,
)
from bench.output.logs import LOG_FORMATS, HumanLog, JsonLog, log_format, warn_skipped
from bench.plan.matrix import Plan, build_plan
from bench.run.machine import capabilities, detect_accelerators
from bench.secrets import redacting_output

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
    merge.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="<output>/<run id> of the sharded run, or SYNC_TO_URL/<run id> in a sink",
    )
    merge.add_argument(
        "--log-format", choices=LOG_FORMATS, help="human (default) or json lines (TFBENCH_LOG_FORMAT)"
    )

    compare = sub.add_parser(
        "compare",
        help="compare two runs cell by cell: ratios, intervals, regression verdicts (exit 1 on a regression)",
    )
    compare.add_argument(
        "base",
        metavar="BASE",
        help="the reference run: a directory, hub:ORG/NAME@COMMIT, or a benchmark_v2 results file",
    )
    compare.add_argument(
        "new",
        metavar="NEW",
        help="the run to judge: a directory, hub:ORG/NAME@COMMIT, or a benchmark_v2 results file",
    )
    add_verdict_flags(compare)
    compare.add_argument(
        "--strict", action="store_true", help="also exit 1 when a cell ok in BASE is not ok in NEW"
    )
    compare.add_argument(
        "--calibration",
        metavar="FILE",
        help="the machine's drift from `tfbench calibrate` (default: calibration.json beside NEW, then BASE)",
    )
    compare.add_argument("--html", metavar="FILE", help="also write an HTML report with the ratio plots")
    compare.add_argument("--png", metavar="DIR", help="also write the ratio plots as PNG files")

    ab = sub.add_parser(
        "ab",
        help="measure two transformers sources interleaved on this machine, then compare (exit 1 on a regression)",
    )
    ab.add_argument("base", metavar="BASE", help="a transformers checkout, unpacked wheel, venv, or python")
    ab.add_argument("new", metavar="NEW", help="the same forms as BASE: the code to judge")
    ab.add_argument("--config", "-c", help="config file (default: TFBENCH_CONFIG, else the embedded default)")
    ab.add_argument(
        "--run-id", help="name the pair (<id>-base, <id>-new), so that the same command resumes it"
    )
    ab.add_argument(
        "--order", choices=("abba", "shuffled"), default="abba", help="which side goes first at each step"
    )
    add_verdict_flags(ab)
    ab.add_argument("--log-format", choices=LOG_FORMATS, help="human (default) or json lines")
    _add_field_flags(ab)

    calibrate = sub.add_parser(
        "calibrate",
        help="learn how much this machine drifts between runs, from 3+ runs of one config (for compare)",
    )
    calibrate.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="runs of the same config, same hardware"
    )
    calibrate.add_argument(
        "--write", metavar="FILE", help="where to keep it (default: calibration.json beside the runs)"
    )

    report = sub.add_parser("report", help="a run's summary table, and plots as HTML or PNG")
    report.add_argument(
        "run_dir", metavar="RUN_DIR", help="<output>/<run id>, or a benchmark_v2 results file"
    )
    report.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    report.add_argument("--png", metavar="DIR", help="write the plots as PNG files")

    history = sub.add_parser("history", help="a metric of one cell across commits, with level shifts flagged")
    history.add_argument(
        "source",
        nargs="?",
        metavar="DIR",
        help="a directory of run directories (and benchmark_v2 results files)",
    )
    history.add_argument(
        "--repo",
        metavar="ORG/NAME",
        help="a Hub dataset that runs were pushed to (by tfbench or benchmark_v2)",
    )
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
    add_v2_parser(sub)
    return parser


def cmd_plan(args: argparse.Namespace, out: Console) -> int:
    from bench.output.tables import plan_lines, plan_table, shard_table
    from bench.plan.shard import assign, shard_summary

    if args.shards is not None and args.shards < 1:
        raise UserError(f"--shards = {args.shards}: allowed: an integer >= 1")
    configs = load_config_args(args)
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


def cmd_run(args: argparse.Namespace, out: Console, err: Console, log: Any) -> int:
    from bench.plan.shard import parse_shard
    from bench.run.session import RunRequest, run_configs

    configs = load_config_args(args)
    request = RunRequest(
        run_id=args.run_id or os.environ.get("TFBENCH_RUN_ID") or None,
        run_id_source="--run-id" if args.run_id else "TFBENCH_RUN_ID",
        shard=parse_shard(os.environ, args.shard),
        shard_source=_shard_source(args),
    )
    return run_configs(configs, request, out, err, log)


def _shard_source(args: argparse.Namespace) -> str:
    if args.shard:
        return "--shard"
    return "TFBENCH_SHARD" if os.environ.get("TFBENCH_SHARD") else "JOB_COMPLETION_INDEX/TFBENCH_SHARD_COUNT"


def cmd_report(args: argparse.Namespace, out: Console, log: Any) -> int:
    from bench.output.tables import print_summary, profile_lines

    run = load_run(args.run_dir, log)
    records = run.records()
    print_summary(out, records, title=run.run_id)
    profiles = profile_lines(records)
    if profiles:
        out.file.write("\n" + "\n".join(profiles) + "\n")  # plain text: operator names hold [brackets]
        out.file.flush()
    if args.html or args.png:
        from bench.output.html import write_run_report

        for path in write_run_report(run, args.html, args.png):
            sys.stderr.write(f"wrote {path}\n")
    return EXIT_OK


def cmd_history(args: argparse.Namespace, log: Any) -> int:
    from bench.output.history_command import history

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
    from bench.run.session import push_once

    return EXIT_OK if push_once(run_path, repo, not args.public, log) else EXIT_PUSH_FAILED


def cmd_merge(args: argparse.Namespace, out: Console, log: Any) -> int:
    from bench.output.tables import print_summary
    from bench.run.merge import merge

    if "://" in args.run_dir:
        return merge_in_sink(args.run_dir, out, log)
    run_path = Path(args.run_dir)
    if not run_path.is_dir():
        raise UserError(f"{run_path} is not a directory; give <output>/<run id> of a sharded run")
    merged, records = merge(run_path, warn=lambda skipped: warn_skipped(log, skipped))
    if log.human:
        print_summary(out, records, title=f"{merged.run_id} (merged)")
    counts = merged.counts or {}
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if v)
    shard_count = (merged.model_extra or {}).get("shard_count")
    log.emit(
        "run_merged",
        run_id=merged.run_id,
        path=str(run_path),
        counts=counts,
        message=f"merged {shard_count} shards into {run_path} ({text})",
    )
    return EXIT_OK


def merge_in_sink(url: str, out: Console, log: Any) -> int:
    """`tfbench merge s3://BUCKET/PREFIX/RUN_ID`: the shards from the sink, merged here, the merged
    run written back beside them."""
    import tempfile

    from bench.output.tables import print_summary
    from bench.run.merge import merge
    from bench.run.sink import Sink, SinkError, check_sink_url
    from bench.run.sync import download_run, upload_tree

    base, _, run_id = url.rstrip("/").rpartition("/")
    if not run_id or "://" not in base:
        raise UserError(
            f"RUN_DIR {url!r}: a run in a sink is URL/RUN_ID, e.g. s3://bucket/prefix/20261202T101500Z-tfbench"
        )
    sink = Sink(check_sink_url(base, "RUN_DIR"))
    with tempfile.TemporaryDirectory(prefix="tfbench-merge-") as tmp:
        try:
            files = download_run(sink, run_id, Path(tmp))
            if not files:
                raise UserError(f"{url}: no run {run_id} in {sink.url}")
            merged, records = merge(Path(tmp) / run_id, warn=lambda skipped: warn_skipped(log, skipped))
            written = upload_tree(sink, Path(tmp) / run_id, Path(tmp), skip=(f"{run_id}/shards/",))
        except SinkError as exc:
            log.emit("sync_failed", level="error", exit_code=EXIT_PUSH_FAILED, message=str(exc))
            return EXIT_PUSH_FAILED
    if log.human:
        print_summary(out, records, title=f"{merged.run_id} (merged)")
    log.emit(
        "run_merged",
        run_id=merged.run_id,
        path=url,
        counts=merged.counts or {},
        message=f"merged the shards of {run_id} from {sink.url}; {written} files written back",
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
        if args.command == "ab":
            return cmd_ab(args, out, err, log)
        if args.command == "calibrate":
            return cmd_calibrate(args, log)
        if args.command == "report":
            return cmd_report(args, out, log)
        if args.command == "history":
            return cmd_history(args, log)
        if args.command == "v2":
            return cmd_v2(args, out, err, log)
        return cmd_presets(out)
    except (UserError, StorageError) as exc:
        log.emit("error", level="error", exit_code=exc.exit_code, message=str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        log.emit("interrupted", level="error", exit_code=EXIT_SIGINT, message="interrupted")
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
