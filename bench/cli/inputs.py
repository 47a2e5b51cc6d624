"""What the command line reads besides its flags: configs (file, TFBENCH_* variables and field
flags) and runs (a directory, a run pushed to a Hub dataset, or a benchmark_v2 results file)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bench.config.schema import DEMO_CONFIG, LoadedConfig, field_names
from bench.config.sources import load_configs, parse_text_value
from bench.errors import ConfigNotFoundError, UserError
from bench.output.logs import warn_skipped
from bench.results import benchmark_v2_read
from bench.results.store import Run, RunFileError, open_run

# The embedded CPU demo, run when no config is given.
DEFAULT_CONFIG = Path(__file__).parent.parent / "default_config.yaml"


def field_flags(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for key in field_names():
        value = getattr(args, f"field_{key}", None)
        if value is not None:
            out[key] = parse_text_value(key, value)
    return out


def load_config_args(args: argparse.Namespace) -> list[LoadedConfig]:
    path = args.config or os.environ.get("TFBENCH_CONFIG") or None
    if path == DEMO_CONFIG and not Path(path).exists():
        path = None
    try:
        return load_configs(path, os.environ, field_flags(args), default_path=DEFAULT_CONFIG)
    except ConfigNotFoundError as exc:
        raise ConfigNotFoundError(f"{exc} [from {'--config' if args.config else 'TFBENCH_CONFIG'}]") from None


def thresholds(items: list[str]) -> dict[str, float]:
    from bench.analysis.compare import COMPARED_METRICS as METRICS

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


def load_run(source: str, log: Any) -> Run:
    """A run directory, a run pushed to a Hub dataset (hub:ORG/NAME@COMMIT or @RUN_ID), or a
    transformers benchmark_v2 results file (<model>_benchmark_<time>.json, or the
    benchmark_run_<time>.jsonl it pushes to a Hub dataset); files in its cells/
    that are not records, and benchmark_v2 configs that are no tfbench cell, are named and skipped."""
    if source.startswith("hub:"):
        from bench.hub.pull import load_hub_run

        repo, sep, ref = source[4:].partition("@")
        if not sep or not ref:
            raise UserError(
                f"{source!r}: a Hub run is hub:ORG/NAME@COMMIT (a measured commit sha, 7+) or @RUN_ID"
            )
        return load_hub_run(repo, ref)
    if Path(source).is_file():
        try:
            if source.endswith(".jsonl"):
                run = benchmark_v2_read.read_hub_file(source)
            else:
                run = benchmark_v2_read.read_results_file(source)
        except RunFileError as exc:
            raise RunFileError(f"{exc}; or give a tfbench run directory, <output>/<run id>") from None
    else:
        run = open_run(source)
    for skipped in run.skipped:
        warn_skipped(log, skipped)
    return run
