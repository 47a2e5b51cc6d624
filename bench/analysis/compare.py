"""Compare two runs cell by cell: what got slower or faster, by how much, and how sure that is.

`tfbench compare BASE NEW` matches the cells of two run directories by cell id (a hash of what
defines the measurement, the same on every machine). For each cell measured (`ok`) in both and
each key metric it reports the ratio of medians NEW/BASE with a 95% confidence interval and a
verdict. Pure functions over the results files: no torch here.

Samples
-------
The raw per-run values of each cell record (CellRecord.samples: `runs[i][metric]`), one per timed generate call, so
n = measurement_iterations on each side. Continuous batching cells time ttft and tpot per
request; the requests of one run share that run's batch and are not independent of each other,
so each run contributes the median over its requests (n stays the number of runs). A metric a
cell does not measure (continuous batching has no batch-level prefill/decode split) is left out.
Peak memory is one number per cell (`memory.peak_bytes`, the peak over all its runs): its ratio
is reported, but with one value per side there is nothing to test, so its verdict is always
"not tested" and it never decides a cell's verdict; it is flagged when beyond the threshold.

The test is bench.analysis.ranktest: two-sided Mann-Whitney U with its Hodges-Lehmann interval.

Verdicts
--------
A metric is a regression or an improvement only if BOTH the change passes its threshold (default
5%, per metric with `thresholds={"tpot": 0.03}`) AND it is significant (p < alpha, the interval
excluding 1). A threshold t means a change by a factor of more than 1 + t either way (ratio above
1 + t or below 1 / (1 + t)), so a latency 10% higher and the throughput 1/1.1 it implies are
judged alike. Direction: for latencies and memory higher is worse, for throughputs lower is
worse. Fewer than 3 values on a side, or too few to ever reach p < alpha: "insufficient data".
A cell is a regression if any metric regressed, else an improvement if any improved, else
unchanged (or insufficient data when no metric could be tested).

alpha is per metric and cell: over six metrics and many cells, some changes will be
significant by chance; the threshold is what keeps those below it out of the verdicts.

Cells only in one run, and cells not ok in one of them (failed, skipped, oom, ...) are listed
apart with both statuses. Runs on different hardware or with different measurement settings
compare with a warning, not an error; software differences (torch, transformers, the measured
commit) are listed as notes, since they are usually the point of the comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.analysis.ranktest import DEFAULT_ALPHA, rank_test
from bench.errors import UserError
from bench.results.records import HIGHER_IS_BETTER, RUN_METRICS, UNITS, CellRecord, CellSpec, RunMeta
from bench.results.store import Run

KEY_METRICS = RUN_METRICS
MEMORY_METRIC = "peak_memory_bytes"  # memory.peak_bytes, one value per cell: ratio only
# What compare judges: the per-run metrics, and peak memory (ratio only).
COMPARED_METRICS = (*KEY_METRICS, MEMORY_METRIC)
LABELS = {
    "e2e_latency": "e2e",
    "ttft": "ttft",
    "tpot": "tpot",
    "e2e_throughput": "e2e tok/s",
    "decode_throughput": "decode tok/s",
    "prefill_throughput": "prefill tok/s",
    MEMORY_METRIC: "peak mem",
}

DEFAULT_THRESHOLD = 0.05
MIN_SAMPLES = 3

REGRESSION = "regression"
IMPROVEMENT = "improvement"
UNCHANGED = "unchanged"
INSUFFICIENT = "insufficient data"
NOT_TESTED = "not tested"
VERDICT_ORDER = {REGRESSION: 0, IMPROVEMENT: 1, INSUFFICIENT: 2, UNCHANGED: 3}
EXIT_REGRESSION = 1

METHOD = (
    "ratio of medians NEW/BASE; two-sided Mann-Whitney U test with its Hodges-Lehmann interval on the "
    "log scale (exact null distribution without ties and for at most 50 runs a side, else the normal "
    "approximation with tie and continuity corrections); a verdict needs p < alpha and a change beyond "
    "the threshold; peak memory: one value per run, ratio only, not tested"
)

# run.json config fields that change what a cell measures without changing its id.
SETTINGS_KEYS = (
    "warmup_iterations",
    "measurement_iterations",
    "seed",
    "compile_fullgraph",
    "compile_dynamic",
    "gpu_monitoring",
    "gpu_sample_interval_s",
)
SOFTWARE_KEYS = ("torch", "transformers", "flash-attn", "kernels", "accelerate", "tfbench")


@dataclass
class MetricComparison:
    metric: str
    unit: str
    better: str  # "lower" or "higher"
    threshold: float
    verdict: str  # regression, improvement, unchanged, insufficient data, not tested
    n_base: int
    n_new: int
    base_median: float | None
    new_median: float | None
    ratio: float | None  # NEW median / BASE median
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    hodges_lehmann: float | None
    test: str | None  # "exact", "normal approximation" or None (not tested)
    significant: bool
    beyond_threshold: bool
    note: str = ""


@dataclass
class CellComparison:
    cell_id: str
    name: str
    cell: CellSpec
    verdict: str
    metrics: dict[str, MetricComparison]


@dataclass
class CellStatus:
    """A cell that could not be compared: in one run only, or not ok in at least one."""

    cell_id: str
    name: str
    base_status: str | None  # None: not in that run
    new_status: str | None
    base_reason: str | None = None
    new_reason: str | None = None


@dataclass
class Comparison:
    base: dict[str, Any]  # run_id, path, status, measured_commit, hardware, packages
    new: dict[str, Any]
    alpha: float
    thresholds: dict[str, float]
    method: str
    cells: list[CellComparison] = field(default_factory=list)  # most notable first
    only_base: list[CellStatus] = field(default_factory=list)
    only_new: list[CellStatus] = field(default_factory=list)
    not_compared: list[CellStatus] = field(default_factory=list)  # in both, not ok in at least one
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in VERDICT_ORDER}
        for c in self.cells:
            out[c.verdict] += 1
        out["only in base"] = len(self.only_base)
        out["only in new"] = len(self.only_new)
        out["not compared"] = len(self.not_compared)
        return out

    @property
    def lost(self) -> list[CellStatus]:
        """Cells ok in BASE that are in NEW but not ok there (a new failure, OOM, timeout, skip)."""
        return [c for c in self.not_compared if c.base_status == "ok"]


def resolve_thresholds(given: dict[str, float] | None) -> dict[str, float]:
    """Every compared metric's threshold: the given ones, DEFAULT_THRESHOLD for the rest."""
    out = dict.fromkeys(COMPARED_METRICS, DEFAULT_THRESHOLD)
    for key, value in (given or {}).items():
        if key not in out:
            raise UserError(f"threshold for unknown metric {key!r}; metrics: {', '.join(COMPARED_METRICS)}")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise UserError(f"threshold for {key} must be a fraction >= 0 (0.05 for 5%), not {value!r}")
        out[key] = float(value)
    return out


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def compare_metric(
    metric: str, base: list[float], new: list[float], threshold: float, alpha: float = DEFAULT_ALPHA
) -> MetricComparison:
    """The verdict on one metric of one cell from its BASE and NEW samples (see the module docstring)."""
    b_med, n_med = _median(base), _median(new)
    ratio = n_med / b_med if b_med and n_med is not None else None
    beyond = ratio is not None and abs(math.log(ratio)) > math.log1p(threshold)
    higher_better = metric in HIGHER_IS_BETTER
    result = MetricComparison(
        metric=metric,
        unit=UNITS.get(metric, "B" if metric == MEMORY_METRIC else ""),
        better="higher" if higher_better else "lower",
        threshold=threshold,
        verdict=INSUFFICIENT,
        n_base=len(base),
        n_new=len(new),
        base_median=b_med,
        new_median=n_med,
        ratio=ratio,
        ci_low=None,
        ci_high=None,
        p_value=None,
        hodges_lehmann=None,
        test=None,
        significant=False,
        beyond_threshold=beyond,
    )
    if metric == MEMORY_METRIC:
        result.verdict = NOT_TESTED
        result.note = "one value per run: ratio only, no test"
        return result
    if len(base) < MIN_SAMPLES or len(new) < MIN_SAMPLES:
        result.note = f"{len(base)} and {len(new)} runs: a test needs at least {MIN_SAMPLES} on each side"
        return result
    test = rank_test(base, new, alpha)
    result.p_value = test.p_value
    result.hodges_lehmann = test.hodges_lehmann
    result.test = "exact" if test.exact else "normal approximation"
    if test.ci_low is None or test.ci_high is None:
        smallest = 2 / math.comb(len(base) + len(new), len(base))
        result.note = (
            f"{len(base)} and {len(new)} runs can never reach p < {alpha:g} "
            f"(the smallest possible p is {smallest:.3g})"
        )
        return result
    result.ci_low, result.ci_high = test.ci_low, test.ci_high
    assert ratio is not None
    up = ratio > 1
    result.significant = test.p_value < alpha and (test.ci_low > 1 if up else test.ci_high < 1)
    if result.significant and beyond:
        worse = up != higher_better
        result.verdict = REGRESSION if worse else IMPROVEMENT
    else:
        result.verdict = UNCHANGED
        if result.significant:
            result.note = f"significant, but within the {threshold:.0%} threshold"
        elif beyond:
            result.note = (
                f"beyond the {threshold:.0%} threshold, but not significant (p = {test.p_value:.2g})"
            )
        elif test.p_value < alpha:
            result.note = "the rank test and the ratio of medians point different ways"
    return result


def compare_cell(
    cell_id: str, base: CellRecord, new: CellRecord, limits: dict[str, float], alpha: float
) -> CellComparison:
    metrics: dict[str, MetricComparison] = {}
    for metric in KEY_METRICS:
        b, n = base.samples(metric), new.samples(metric)
        if b or n:
            metrics[metric] = compare_metric(metric, b, n, limits[metric], alpha)
    b_mem = [float(v) for v in (base.peak_memory_bytes,) if v]
    n_mem = [float(v) for v in (new.peak_memory_bytes,) if v]
    if b_mem or n_mem:
        metrics[MEMORY_METRIC] = compare_metric(MEMORY_METRIC, b_mem, n_mem, limits[MEMORY_METRIC], alpha)
    verdicts = {m.verdict for m in metrics.values()}
    if REGRESSION in verdicts:
        verdict = REGRESSION
    elif IMPROVEMENT in verdicts:
        verdict = IMPROVEMENT
    elif UNCHANGED in verdicts:
        verdict = UNCHANGED
    else:
        verdict = INSUFFICIENT
    return CellComparison(cell_id, new.cell.name, new.cell, verdict, metrics)


def _effect(c: CellComparison) -> float:
    """The largest change among the metrics that decided the verdict, for ordering."""
    sizes = [abs(math.log(m.ratio)) for m in c.metrics.values() if m.verdict == c.verdict and m.ratio]
    return max(sizes, default=0.0)


def _status(cell_id: str, base: CellRecord | None, new: CellRecord | None) -> CellStatus:
    either = new or base
    return CellStatus(
        cell_id=cell_id,
        name=either.cell.name if either is not None else cell_id,
        base_status=base.status if base else None,
        new_status=new.status if new else None,
        base_reason=base.reason if base else None,
        new_reason=new.reason if new else None,
    )


def _run_info(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "status": run.meta.status,
        "measured_commit": run.meta.commit_sha,
        "hardware": run.meta.hardware,
        "packages": {k: v for k, v in run.meta.packages().items() if k in SOFTWARE_KEYS},
        "cells": len(run.cells),
    }


def _gpus(meta: RunMeta) -> list[str]:
    env = meta.environment
    out = []
    for g in env.gpus if env is not None else []:
        mem = g.memory_total_bytes
        out.append(g.name + (f" ({mem / 2**30:.0f} GiB)" if mem else ""))
    return out


def run_differences(base: Run, new: Run) -> tuple[list[str], list[str]]:
    """(warnings, notes): hardware and measurement settings that differ warn; software is a note."""
    warnings: list[str] = []
    notes: list[str] = []
    b_env, n_env = base.meta.environment, new.meta.environment
    if b_env is not None and n_env is not None:
        for label, b, n in (
            ("GPUs", _gpus(base.meta), _gpus(new.meta)),
            ("CPU", b_env.cpu, n_env.cpu),
            ("CPU count", b_env.cpu_count, n_env.cpu_count),
        ):
            if b != n:
                show_b = ", ".join(b) if isinstance(b, list) else b
                show_n = ", ".join(n) if isinstance(n, list) else n
                warnings.append(
                    f"different hardware: {label} {show_b or 'none'} (BASE) vs {show_n or 'none'} (NEW); "
                    "the ratios mix the change with the machines"
                )
    elif base.meta.hardware != new.meta.hardware:
        warnings.append(f"different hardware: {base.meta.hardware} (BASE) vs {new.meta.hardware} (NEW)")
    b_cfg, n_cfg = base.meta.config, new.meta.config
    for key in SETTINGS_KEYS:
        if key in b_cfg or key in n_cfg:
            b, n = b_cfg.get(key), n_cfg.get(key)
            if b != n:
                warnings.append(f"different measurement settings: {key} {b!r} (BASE) vs {n!r} (NEW)")
    for label, run in (("BASE", base), ("NEW", new)):
        status = run.meta.status
        if status not in (None, "finished"):
            warnings.append(f"the {label} run is {status}, not finished: some cells may be missing")
        if run.meta.shard is not None:
            warnings.append(
                f"{label} is a single shard of a sharded run; compare the merged run for all cells"
            )
    b_pkg, n_pkg = base.meta.packages(), new.meta.packages()
    for key in SOFTWARE_KEYS:
        if b_pkg.get(key) != n_pkg.get(key):
            notes.append(f"{key} {b_pkg.get(key) or 'not installed'} -> {n_pkg.get(key) or 'not installed'}")
    for key in ("driver_version", "cuda_driver_version", "python"):
        b, n = getattr(b_env, key, None), getattr(n_env, key, None)
        if b != n:
            notes.append(f"{key} {b} -> {n}")
    b_sha, n_sha = base.meta.commit_sha, new.meta.commit_sha
    if b_sha != n_sha:
        notes.append(f"measured commit {short_sha(b_sha)} -> {short_sha(n_sha)}")
    return warnings, notes


def short_sha(sha: str | None) -> str:
    return sha[:12] if sha else "unknown"


def compare_runs(
    base: Run,
    new: Run,
    thresholds: dict[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> Comparison:
    """Compare NEW against BASE cell by cell. `seed` is ignored: the method has no randomness.

    thresholds: per metric (keys of COMPARED_METRICS), a fraction (0.03 for 3%); default 0.05 each.
    """
    del seed  # accepted for callers that pass one; the rank test and its interval are exact
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise UserError(f"alpha must be between 0 and 1 (0.05 for 95% intervals), not {alpha!r}")
    limits = resolve_thresholds(thresholds)
    warnings, notes = run_differences(base, new)
    result = Comparison(
        base=_run_info(base),
        new=_run_info(new),
        alpha=float(alpha),
        thresholds=limits,
        method=METHOD,
        warnings=warnings,
        notes=notes,
    )

    def index(cell_id: str) -> int:
        rec = new.cells.get(cell_id) or base.cells.get(cell_id)
        return rec.cell.index if rec is not None else 0

    for cell_id in sorted(set(base.cells) | set(new.cells), key=lambda c: (index(c), c)):
        b, n = base.cells.get(cell_id), new.cells.get(cell_id)
        if n is None:
            result.only_base.append(_status(cell_id, b, None))
        elif b is None:
            result.only_new.append(_status(cell_id, None, n))
        elif not (b.ok and n.ok):
            result.not_compared.append(_status(cell_id, b, n))
        else:
            result.cells.append(compare_cell(cell_id, b, n, limits, alpha))
    order = {c.cell_id: i for i, c in enumerate(result.cells)}
    result.cells.sort(key=lambda c: (VERDICT_ORDER[c.verdict], -_effect(c), order[c.cell_id]))
    if base.cells and new.cells and not (result.cells or result.not_compared):
        result.warnings.append("the two runs have no cell in common: were they run from different configs?")
    return result


def exit_code(cmp: Comparison, strict: bool = False) -> int:
    """1 when any cell regressed (strict: also when a cell ok in BASE is in NEW but not ok), else 0."""
    if any(c.verdict == REGRESSION for c in cmp.cells):
        return EXIT_REGRESSION
    if strict and cmp.lost:
        return EXIT_REGRESSION
    return 0
