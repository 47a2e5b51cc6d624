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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from . import __version__
from .config import ALLOWED, NAME_RE, LoadedConfig, field_names, load_configs, parse_text_value
from .errors import EXIT_CELL_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_USAGE, UserError
from .hardware import Accelerators, detect_accelerators, environment, is_installed, measured_commit
from .matrix import Capabilities, Plan, build_plan
from .presets import PRESETS

DEFAULT_CONFIG = Path(__file__).with_name("default_config.yaml")
DEFAULT_OUTPUT = "results"
RICH_PLAN_LIMIT = 500
BOOL_FIELDS = {"trust_remote_code", "compile_fullgraph", "gpu_monitoring"}


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
    _add_field_flags(run)

    plan = sub.add_parser("plan", help="print the matrix: every cell, its id, and whether it runs or why not")
    plan.add_argument(
        "--config", "-c", help="config file or directory (default: TFBENCH_CONFIG, else the embedded default)"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
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
    return load_configs(path, os.environ, _flags(args), default_path=DEFAULT_CONFIG)


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


def _run_id(args: argparse.Namespace, index: int, total: int) -> str | None:
    explicit = args.run_id or os.environ.get("TFBENCH_RUN_ID")
    if not explicit:
        return None
    if not NAME_RE.match(explicit):
        source = "--run-id" if args.run_id else "TFBENCH_RUN_ID"
        raise UserError(f"{source} = {explicit!r}: {ALLOWED['run_name']}")
    return explicit if total == 1 else f"{explicit}-{index + 1}"


def cmd_plan(args: argparse.Namespace, out: Console) -> int:
    from .report import plan_lines, plan_table

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
    if args.json:
        payload = [
            {"source": lc.source, "config": lc.config.as_given(), **plan.to_dict()} for lc, plan in plans
        ]
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
        for w in plan.warnings:
            out.print(f"[yellow]warning:[/yellow] {w}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .report import ProgressReporter, summary_table, unmeasured_table
    from .runner import Runner, Settings, new_run_id
    from .store import RunDir

    configs = _configs(args)
    accel = detect_accelerators()
    prepared = []
    # Every config is checked before the first cell runs: a bad line 3 must not cost lines 1-2.
    for i, lc in enumerate(configs):
        cfg = lc.config
        plan = build_plan(cfg, capabilities(cfg.device, accel))
        output = Path(cfg.output or DEFAULT_OUTPUT)
        _check_output(output)
        run_id = _run_id(args, i, len(configs))
        if run_id is not None and (output / run_id).exists():
            raise UserError(f"run {run_id} already exists in {output}; choose another run id")
        prepared.append((lc, plan, output, run_id))
    env = environment(accel)
    commit = measured_commit()
    worst = EXIT_OK
    for lc, plan, output, run_id in prepared:
        cfg = lc.config
        run_id = run_id or new_run_id(cfg.run_name, output)
        rundir = RunDir(output, run_id)
        meta = {
            "run_id": run_id,
            "run_name": cfg.run_name,
            "config_source": lc.source,
            "config_as_given": lc.given,
            "config_origins": lc.origins,
            "config": cfg.as_given(),
            "plan": plan.to_dict(),
            "environment": env,
            "measured_commit": commit,
        }
        settings = Settings(
            warmup_iterations=cfg.warmup_iterations,
            measurement_iterations=cfg.measurement_iterations,
            seed=cfg.seed,
            trust_remote_code=cfg.trust_remote_code,
            gpu_monitoring=cfg.gpu_monitoring,
            cell_timeout_s=cfg.cell_timeout_s,
        )
        err.print(
            f"[bold]tfbench {__version__}[/bold] run [bold]{run_id}[/bold]: {cfg.model} on {plan.capabilities.device}, "
            f"{len(plan.runnable)} cells to run, {len(plan.skipped)} skipped -> {rundir.path}",
            highlight=False,
        )
        runner = Runner(rundir, plan, settings, meta, ProgressReporter(err, label=run_id))
        code = runner.execute()
        records = rundir.read_cells()
        out.print(summary_table(records, title=f"{run_id}: {cfg.model} on {plan.capabilities.device}"))
        unmeasured = unmeasured_table(records)
        if unmeasured is not None:
            out.print(unmeasured)
        counts = ", ".join(f"{v} {k}" for k, v in sorted(runner.state.counts.items()) if v)
        out.print(f"results: {rundir.path}  ({counts})", highlight=False)
        if code not in (EXIT_OK, EXIT_CELL_FAILED):
            return code  # interrupted: stop here, later configs are not started
        worst = max(worst, code)
    return worst


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Logs of containers and CI are not terminals; rich would wrap them at 80 columns.
    out = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    try:
        if args.command == "plan":
            return cmd_plan(args, out)
        if args.command == "run":
            return cmd_run(args, out, err)
        return cmd_presets(out)
    except UserError as exc:
        sys.stderr.write(f"tfbench: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("tfbench: interrupted\n")
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
