"""The verdict commands: `tfbench compare`, `tfbench ab` and `tfbench calibrate`, and what they
share (the verdict flags, the rendering of a comparison, the drift of a calibration)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import __version__
from bench.cli.inputs import load_config_args, load_run, thresholds
from bench.errors import EXIT_OK, UserError
from bench.results.store import Run


def add_verdict_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="[METRIC=]FRACTION",
        help="smallest change that counts (default 0.05); METRIC=FRACTION for one metric, repeatable",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")


def cmd_compare(args: argparse.Namespace, out: Console, log: Any) -> int:
    from bench.analysis.compare import compare_runs, exit_code

    base, new = load_run(args.base, log), load_run(args.new, log)
    cmp = compare_runs(base, new, thresholds(args.threshold), args.alpha, drift(base, new, args.calibration))
    show_comparison(cmp, args, out, base, new)
    return exit_code(cmp, strict=args.strict)


def cmd_ab(args: argparse.Namespace, out: Console, err: Console, log: Any) -> int:
    from bench.analysis.compare import check_alpha, compare_runs, exit_code
    from bench.errors import EXIT_CELL_FAILED
    from bench.run.ab import run_ab
    from bench.run.session import RunRequest

    limits = thresholds(args.threshold)  # bad flags exit 2 before anything is measured
    check_alpha(args.alpha)
    configs = load_config_args(args)
    if len(configs) != 1:
        raise UserError(f"--config holds {len(configs)} configs; `tfbench ab` measures one")
    request = RunRequest(
        run_id=args.run_id or os.environ.get("TFBENCH_RUN_ID") or None,
        run_id_source="--run-id" if args.run_id else "TFBENCH_RUN_ID",
    )
    done = run_ab(configs[0], args.base, args.new, request, args.order, out, err, log)
    if done.code not in (EXIT_OK, EXIT_CELL_FAILED):
        return done.code  # interrupted: the same command continues both runs
    base, new = load_run(str(done.base), log), load_run(str(done.new), log)
    cmp = compare_runs(base, new, limits, args.alpha)  # one invocation: no drift between the sides
    show_comparison(cmp, args, out, base, new)
    return max(done.code, exit_code(cmp))


def show_comparison(cmp: Any, args: argparse.Namespace, out: Console, base: Run, new: Run) -> None:
    from bench.output.compare import to_json, to_markdown, to_table

    if args.format == "json":
        sys.stdout.write(json.dumps(to_json(cmp), indent=1) + "\n")
    elif args.format == "markdown":
        sys.stdout.write(to_markdown(cmp) + "\n")
    else:
        out.print(to_table(cmp))
    if getattr(args, "html", None) or getattr(args, "png", None):
        from bench.output.html import write_compare_report

        for path in write_compare_report(cmp, args.html, args.png, base, new):
            sys.stderr.write(f"wrote {path}\n")


def drift(base: Run, new: Run, given: str | None) -> Any:
    """Each metric's drift from the calibration of the runs' hardware, or None (compare decides)."""
    from bench.analysis.calibrate import drifts
    from bench.results import calibration

    given = given or os.environ.get("TFBENCH_CALIBRATION") or None
    if given is not None:
        if not Path(given).is_file():
            raise UserError(
                f"calibration {given!r} (--calibration or TFBENCH_CALIBRATION): no such file "
                "(make one with `tfbench calibrate RUN...`)"
            )
        paths = [Path(given)]
    else:
        paths = [r.path.parent for r in (new, base) if not str(r.path).startswith("hub:")]
    found = calibration.find_entry(paths, new.meta.hardware)
    return drifts(*found) if found is not None else None


def cmd_calibrate(args: argparse.Namespace, log: Any) -> int:
    from bench.analysis.calibrate import calibrate
    from bench.analysis.noise import CannotEstimate
    from bench.results import calibration
    from bench.run.workers import now_iso

    runs = [load_run(path, log) for path in args.runs]
    try:
        hardware, metrics, notes = calibrate(runs)
    except CannotEstimate as exc:
        raise UserError(f"cannot calibrate from {len(runs)} runs: {exc}") from None
    target = Path(args.write) if args.write else runs[0].path.parent / calibration.FILE_NAME
    entry = {
        "measured_at": now_iso(),
        "runs": [r.run_id for r in runs],
        "tfbench_version": __version__,
        "metrics": {
            m.metric: {
                "run_var": m.run_var,
                "cell_var": m.cell_var,
                "df": m.df,
                "process_var": m.process_var,
                "process_df": m.process_df,
                "cells": m.cells,
            }
            for m in metrics
        },
    }
    try:
        calibration.save(target, hardware, entry)
    except OSError as exc:
        raise UserError(f"--write {str(target)!r}: cannot write there: {exc.strerror or exc}") from None
    rows = [
        [
            m.metric,
            f"{m.run_var**0.5:.2%}",
            f"{m.cell_var**0.5:.2%}",
            f"{(m.process_var or 0) ** 0.5:.2%}",
            str(m.cells),
        ]
        for m in metrics
    ]
    from bench.output.tables import aligned_lines

    lines = [f"{hardware}: drift between {len(runs)} runs (standard deviations of the log level)"]
    lines += aligned_lines(
        ("metric", "run", "cell x run", "between processes", "cells"), rows, {1, 2, 3, 4}, rule=True
    )
    lines += [f"note: {n}" for n in notes] + [f"written to {target}"]
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK
