"""How much a machine drifts between runs, learned from repeated runs of one matrix.

`tfbench calibrate RUN RUN ...` takes runs of the same config on the same hardware (made one after
another, the way runs to be compared are made) and estimates, per metric, the variance components
of bench.analysis.noise: the run offset shared by every cell (run_var), what one cell moves in one
run beyond its processes (cell_var), and the typical between-process variance (process_var, for
runs measured with one process per cell). Pure: it takes runs already read, and returns numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.analysis.noise import CannotEstimate, Drift, estimate_drift
from bench.results.calibration import HardwareCalibration
from bench.results.records import RUN_METRICS
from bench.results.store import Run

MIN_RUNS = 3


@dataclass(frozen=True)
class MetricCalibration:
    metric: str
    run_var: float
    cell_var: float
    df: int
    process_var: float | None
    process_df: int
    cells: int


def drifts(path: Path, entry: HardwareCalibration) -> dict[str, Drift]:
    """Each metric's drift as a calibration file keeps it, named by where it came from."""
    source = f"calibrated ({path}, {len(entry.runs)} runs, {entry.measured_at or 'undated'})"
    return {
        metric: Drift(d.run_var, d.cell_var, d.df, source, d.process_var, d.process_df or math.inf)
        for metric, d in entry.metrics.items()
    }


def calibrate(runs: Sequence[Run]) -> tuple[str, list[MetricCalibration], list[str]]:
    """(the hardware label, each metric's components, notes) from repeated runs of one matrix.

    CannotEstimate (said to the user) when there are fewer than MIN_RUNS runs, they ran on
    different hardware, or no cell was measured in all of them."""
    if len(runs) < MIN_RUNS:
        raise CannotEstimate(
            f"calibration needs at least {MIN_RUNS} runs of the same config; got {len(runs)}"
        )
    labels = {r.meta.hardware for r in runs}
    if len(labels) > 1:
        raise CannotEstimate(f"the runs ran on different hardware: {', '.join(sorted(labels))}")
    common = set.intersection(*({cid for cid, rec in r.cells.items() if rec.ok} for r in runs))
    if not common:
        raise CannotEstimate("no cell was measured (status ok) in every run")
    cells = sorted(common)
    notes = []
    out = []
    for metric in RUN_METRICS:
        levels = []
        process_ss, process_df = 0.0, 0
        usable = [c for c in cells if all(len(r.cells[c].process_medians(metric)) >= 1 for r in runs)]
        if not usable:
            continue
        for run in runs:
            row = []
            for cid in usable:
                logs = [math.log(v) for v in run.cells[cid].process_medians(metric) if v > 0]
                mean = math.fsum(logs) / len(logs)
                var = math.fsum((x - mean) ** 2 for x in logs) / (len(logs) - 1) if len(logs) > 1 else 0.0
                process_ss += var * (len(logs) - 1)
                process_df += len(logs) - 1
                row.append((mean, var / len(logs)))
            levels.append(row)
        run_var, cell_var, df = estimate_drift(levels)
        process_var = process_ss / process_df if process_df else None
        out.append(MetricCalibration(metric, run_var, cell_var, df, process_var, process_df, len(usable)))
    if any(r.cells[c].process_count < 2 for r in runs for c in cells):
        notes.append(
            "some runs measured a cell in one process: their within-run noise is not known, so "
            "the run variance may include some of it"
        )
    return labels.pop(), out, notes
