"""`tfbench history`: one metric of one cell across commits, and the commits where its level shifted.

`tfbench history DIR --metric tpot --cell CELL_ID` reads the run directories under DIR (or DIR
itself when it is one run) and the transformers benchmark_v2 results files there (or one level
down); `tfbench history --repo ORG/NAME ...` reads a Hub dataset that `push_to_hub` filled, or one
that benchmark_v2 pushed to (its full_results/ and summarized_results/ files, one run each). It
prints one row per measured commit (and writes a PNG with --plot) and flags the commits where the metric's level shifted. Informational: the exit code is 0 whatever
the history shows (`tfbench compare` is the gate for one change); usage errors exit 2.

The pieces: bench.results.series reads run directories and bench.hub.pull a Hub dataset, both
into measurements of the cell; bench.analysis.levels turns them into points, keeps one kind of
hardware and finds the change points (the method is described there); bench.output.history
renders the table, the JSON and the plot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.analysis.calibrate import drifts
from bench.analysis.compare import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from bench.analysis.levels import (
    DEFAULT_WINDOW,
    Point,
    change_points,
    check_metric,
    check_params,
    select_hardware,
    to_points,
)
from bench.analysis.noise import Drift
from bench.errors import UserError
from bench.hub.pull import hub_measurements
from bench.output.history import EXIT_CODE, plot, render, to_json
from bench.results import calibration
from bench.results.series import local_measurements
from bench.results.store import Skipped

FORMATS = ("text", "markdown", "json")


def _local(
    directory: str | os.PathLike[str], metric: str, cell: str, warn: Callable[[Skipped], None] | None
) -> tuple[list[Point], list[str]]:
    """Points and notes; each file in a cells/ that is not a record is passed to `warn` (else
    noted) and left out."""
    check_metric(metric)
    left_out: list[Skipped] = []
    found, notes = local_measurements(directory, cell, warn if warn is not None else left_out.append)
    points, counted = to_points(found, metric)
    return points, notes + counted + [f"{item}: left out" for item in left_out]


def load_local(directory: str | os.PathLike[str], metric: str, cell: str) -> list[Point]:
    """One point per run under `directory` (or the run `directory` is) that has `cell` ok, in commit order.

    `cell`: a cell id, a unique prefix of one (at least 4 characters), or a unique cell name.
    """
    return _local(directory, metric, cell, None)[0]


def load_hub(repo_id: str, metric: str, cell: str, **hub: Any) -> list[Point]:
    """One point per run in the Hub dataset `repo_id` that has `cell` ok, in commit order.

    hub: endpoint, token, raw (True: full/<run>.jsonl, raw samples for the test; False: the much
    smaller summarized/<run>.jsonl, p50 only: the p50 rule), cache_dir (bench.hub.pull.hub_measurements).
    """
    return _hub(repo_id, metric, cell, **hub)[0]


def _hub(repo_id: str, metric: str, cell: str, **hub: Any) -> tuple[list[Point], list[str]]:
    check_metric(metric)
    found, notes = hub_measurements(repo_id, cell, **hub)
    points, counted = to_points(found, metric)
    return points, notes + counted


def calibrated_drift(directory: Path | None, hardware: str, metric: str) -> Drift | None:
    """The drift `tfbench calibrate` measured for this hardware and metric in the runs' directory."""
    found = calibration.find_entry([directory, directory.parent], hardware) if directory else None
    return drifts(*found).get(metric) if found is not None else None


def history(
    source: str | None,
    repo: str | None,
    metric: str,
    cell: str,
    hardware: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    plot_path: Path | None = None,
    fmt: str = "text",
    *,
    alpha: float = DEFAULT_ALPHA,
    window: int = DEFAULT_WINDOW,
    endpoint: str | None = None,
    token: str | None = None,
    raw: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    warn: Callable[[Skipped], None] | None = None,
) -> tuple[str, int]:
    """`tfbench history`: (the text to print, the exit code). The exit code is always 0: history is
    informational (gate on `tfbench compare`); mistakes raise UserError (exit 2).

    source: a directory of run directories (or one run); repo: a Hub dataset ORG/NAME; exactly one.
    fmt: "text", "markdown" or "json". plot_path: also write a PNG there. warn: called with each
    file in a local cells/ directory that is not a cell record (left out; else it is noted).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    if (source is None) == (repo is None):
        raise UserError("give either a directory of run directories or --repo ORG/NAME (exactly one)")
    check_metric(metric)
    check_params(threshold, alpha, window)
    if source is not None:
        points, notes = _local(source, metric, cell, warn)
    else:
        assert repo is not None
        points, notes = _hub(repo, metric, cell, endpoint=endpoint, token=token, raw=raw, cache_dir=cache_dir)
    if not points:
        detail = f": {'; '.join(notes)}" if notes else ""
        raise UserError(f"cell {cell!r} has no ok measurement of {metric} in {source or repo}{detail}")
    kept, excluded = select_hardware(points, hardware)
    drift = calibrated_drift(Path(source) if source is not None else None, kept[-1].hardware, metric)
    cps = change_points(kept, threshold, alpha, window, drift)
    written = plot(kept, cps, metric, plot_path) if plot_path is not None else None
    extra = {"excluded": excluded, "hardware": hardware, "notes": notes}
    if fmt == "json":
        data = to_json(kept, cps, **extra, threshold=threshold, alpha=alpha, window=window)
        data["plot"] = str(written) if written else None
        return json.dumps(data, indent=1) + "\n", EXIT_CODE
    text = render(kept, cps, markdown=fmt == "markdown", **extra, threshold=threshold, window=window)
    if written:
        text += f"plot: {written}\n"
    return text, EXIT_CODE
