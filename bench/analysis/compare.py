"""Compare two runs cell by cell: what got slower or faster, by how much, how sure that is, and
the smallest change the data could have shown.

`tfbench compare BASE NEW` matches the cells of two runs by cell id (a hash of what defines the
measurement, the same on every machine). For each cell measured (`ok`) in both and each per-run
metric it reports the ratio NEW/BASE with its interval, the p-value, the minimum detectable effect
and a verdict. Pure functions over typed records: no I/O, no torch.

Samples
-------
The unit is the worker process (bench.analysis.noise explains why): each side of a metric is the
median of each process's timed runs (CellRecord.process_medians; continuous batching: per run, the
median over its requests). The ratio is that of the geometric means of the process medians. Peak
memory is one number per cell: its ratio is shown, never tested ("not tested"), flagged beyond
the threshold.

The test is bench.analysis.noise.estimate: Welch's t test on the log process medians, with the
run-to-run drift of the machine as one more variance component. Its source is named in every
comparison: "none" when both sides were measured in one invocation, interleaved (`tfbench ab`);
a calibration of the hardware (`tfbench calibrate`); or an assumed drift, conservative, when the
hardware has none (the comparison says so).

Verdicts
--------
With threshold t (default 5%, per metric with `thresholds={"tpot": 0.03}`): a change by a factor
of more than 1 + t either way counts (ratio above 1 + t or below 1 / (1 + t)), so a latency 10%
higher and the throughput 1/1.1 it implies are judged alike. Direction: for latencies and memory
higher is worse, for throughputs lower is worse.

- regression / improvement: significant and the ratio beyond the threshold. A cell is judged on
  three independent metrics (e2e latency, ttft, tpot; the throughputs are their reciprocals, the
  same test), so each is tested at alpha / 3 (Bonferroni): the cell's false-alarm rate is alpha,
  not three times it. Intervals and minimum detectable effects are at that level too;
- unchanged: equivalence shown: two one-sided tests at alpha say the change is smaller than t
  (the 1 - 2 alpha interval lies within the threshold);
- inconclusive: neither: the data cannot resolve the threshold (the interval reaches past it, or
  a side has one process and no calibration says how processes vary).

A cell is a regression if any metric regressed, else an improvement if any improved, else
unchanged when every tested metric is unchanged, else inconclusive. Its minimum detectable effect
is the largest of its metrics'. alpha is per metric and cell; the threshold keeps chance
significance below it out of the verdicts.

Cells only in one run, and cells not ok in one of them (failed, skipped, oom, ...) are listed
apart with both statuses. Runs on different hardware or with different measurement settings
compare with a warning, not an error; software differences (torch, transformers, the measured
commit) are listed as notes, since they are usually the point of the comparison.

A side read from transformers' benchmark_v2 results (bench.results.benchmark_v2_read) gets a
warning saying what it measured otherwise, and only what it records is compared (one GPU name, no
CPU, torch alone, its warm-up and timed iterations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from scipy import stats

from bench.analysis.noise import NO_DRIFT, CannotEstimate, Drift, assumed_drift, estimate, side
from bench.errors import UserError
from bench.plan.matrix import Cell
from bench.results.benchmark_v2_read import from_benchmark_v2
from bench.results.records import HIGHER_IS_BETTER, RUN_METRICS, UNITS, CellRecord, RunMeta
from bench.results.store import Run

KEY_METRICS = RUN_METRICS
MEMORY_METRIC = "peak_memory_bytes"  # memory.peak_bytes, one value per cell: ratio only
# What compare judges: the per-run metrics, and peak memory (ratio only).
COMPARED_METRICS = (*KEY_METRICS, MEMORY_METRIC)
# The independent metrics of a cell: each throughput is the reciprocal of one of these.
FAMILIES = frozenset({"e2e_latency", "ttft", "tpot"})
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
DEFAULT_ALPHA = 0.05

REGRESSION = "regression"
IMPROVEMENT = "improvement"
UNCHANGED = "unchanged"
INCONCLUSIVE = "inconclusive"
NOT_TESTED = "not tested"
VERDICT_ORDER = {REGRESSION: 0, IMPROVEMENT: 1, INCONCLUSIVE: 2, UNCHANGED: 3}
EXIT_REGRESSION = 1

METHOD = (
    "ratio NEW/BASE of the geometric means of each worker process's median; Welch's t test on the log "
    "process medians with the run-to-run drift as a variance component (Satterthwaite degrees of "
    "freedom); each of a cell's metrics at alpha/3 (e2e, ttft, tpot; throughputs are their reciprocals); "
    "regression/improvement: significant and beyond the threshold; unchanged: the whole interval "
    "within the threshold; else inconclusive; peak memory: one value per cell, ratio only, not tested"
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
    verdict: str  # regression, improvement, unchanged, inconclusive, not tested
    base_value: float | None  # geometric mean of the process medians (memory: the peak)
    new_value: float | None
    processes_base: int  # n per side: processes x timed runs
    processes_new: int
    runs_base: int
    runs_new: int
    ratio: float | None  # NEW / BASE
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    df: float | None
    mde: float | None  # the change found with 80% power at alpha, as a fraction
    between_base: float | None  # between-process CV of each side
    between_new: float | None
    significant: bool
    beyond_threshold: bool
    note: str = ""


@dataclass
class CellComparison:
    cell_id: str
    name: str
    cell: Cell
    verdict: str
    metrics: dict[str, MetricComparison]
    mde: float | None = None  # the largest of its tested metrics'
    # The generated tokens differ (sha256) between BASE and NEW; None: a run recorded none. Said
    # beside the verdict, never part of it: a speed verdict is about speed.
    output_changed: bool | None = None


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
    drift: str = ""  # where the run-to-run component came from
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


def _direction(metric: str, ratio: float) -> str:
    worse = (ratio > 1) != (metric in HIGHER_IS_BETTER)
    return REGRESSION if worse else IMPROVEMENT


def compare_metric(
    metric: str,
    base: CellRecord,
    new: CellRecord,
    threshold: float,
    alpha: float = DEFAULT_ALPHA,
    drift: Drift = NO_DRIFT,
    equivalence_alpha: float | None = None,
) -> MetricComparison:
    """The verdict on one metric of one cell (see the module docstring).

    alpha: the level of the test for a change (and of the interval shown); equivalence_alpha: the
    level at which "unchanged" is claimed (two one-sided tests; default alpha)."""
    limit = math.log1p(threshold)
    result = MetricComparison(
        metric=metric,
        unit=UNITS.get(metric, "B" if metric == MEMORY_METRIC else ""),
        better="higher" if metric in HIGHER_IS_BETTER else "lower",
        threshold=threshold,
        verdict=INCONCLUSIVE,
        base_value=None,
        new_value=None,
        processes_base=base.process_count,
        processes_new=new.process_count,
        runs_base=len(base.runs),
        runs_new=len(new.runs),
        ratio=None,
        ci_low=None,
        ci_high=None,
        p_value=None,
        df=None,
        mde=None,
        between_base=None,
        between_new=None,
        significant=False,
        beyond_threshold=False,
    )
    if metric == MEMORY_METRIC:
        b, n = base.peak_memory_bytes, new.peak_memory_bytes
        result.base_value, result.new_value = (float(b) if b else None), (float(n) if n else None)
        if b and n:
            result.ratio = n / b
            result.beyond_threshold = abs(math.log(result.ratio)) > limit
        result.verdict, result.note = NOT_TESTED, "one value per cell: ratio only, no test"
        return result
    b_side = side(base.process_medians(metric), len(base.runs))
    n_side = side(new.process_medians(metric), len(new.runs))
    if b_side is None or n_side is None:
        result.note = "not measured on both sides"
        return result
    result.base_value, result.new_value = math.exp(b_side.mean), math.exp(n_side.mean)
    result.ratio = result.new_value / result.base_value
    result.beyond_threshold = abs(math.log(result.ratio)) > limit
    try:
        est = estimate(b_side, n_side, drift, alpha)
    except CannotEstimate as exc:
        result.note = str(exc)
        return result
    result.ci_low, result.ci_high, result.p_value = est.ci_low, est.ci_high, est.p_value
    result.df, result.mde = est.df, est.mde
    result.between_base, result.between_new = est.between_base, est.between_new
    result.significant = est.p_value < alpha
    if result.significant and result.beyond_threshold:
        result.verdict = _direction(metric, result.ratio)
    elif abs(est.log_ratio) + equivalence_margin(est, equivalence_alpha or alpha) < limit:
        result.verdict = UNCHANGED
        if result.significant:
            result.note = f"significant, but within the {threshold:.0%} threshold"
    else:
        result.verdict = INCONCLUSIVE
        result.note = (
            f"the interval reaches past the {threshold:.0%} threshold; the data can resolve "
            f"{est.mde:.1%} (minimum detectable effect)"
        )
    return result


def equivalence_margin(est: Any, alpha: float) -> float:
    """How far the true log ratio may lie from the estimate at one-sided level alpha: the change
    is within the threshold when the estimate plus this margin is (two one-sided tests, TOST)."""
    return float(stats.t.ppf(1.0 - alpha, est.df)) * est.se if est.se > 0 else 0.0


def compare_cell(
    cell_id: str,
    base: CellRecord,
    new: CellRecord,
    limits: dict[str, float],
    alpha: float,
    drifts: dict[str, Drift] | None = None,
) -> CellComparison:
    metrics: dict[str, MetricComparison] = {}
    measured = [m for m in KEY_METRICS if base.process_medians(m) or new.process_medians(m)]
    # A cell is judged on several metrics; so that its own false-alarm rate stays at alpha, each
    # is tested at alpha / k, k the independent ones among them (a throughput is the reciprocal of
    # a latency of the same runs: the same test).
    per_metric = alpha / max(1, len(FAMILIES.intersection(measured)))
    for metric in measured:
        drift = (drifts or {}).get(metric, NO_DRIFT)
        metrics[metric] = compare_metric(metric, base, new, limits[metric], per_metric, drift, alpha)
    if base.peak_memory_bytes or new.peak_memory_bytes:
        metrics[MEMORY_METRIC] = compare_metric(MEMORY_METRIC, base, new, limits[MEMORY_METRIC], alpha)
    tested = [m for m in metrics.values() if m.verdict != NOT_TESTED]
    verdicts = {m.verdict for m in tested}
    if REGRESSION in verdicts:
        verdict = REGRESSION
    elif IMPROVEMENT in verdicts:
        verdict = IMPROVEMENT
    elif tested and verdicts == {UNCHANGED}:
        verdict = UNCHANGED
    else:
        verdict = INCONCLUSIVE
    mdes = [m.mde for m in tested if m.mde is not None]
    changed = output_changed(base, new)
    return CellComparison(
        cell_id, new.cell.name, new.cell, verdict, metrics, max(mdes) if mdes else None, changed
    )


def output_changed(base: CellRecord, new: CellRecord) -> bool | None:
    """Whether the cell generated other tokens in NEW than in BASE; None where either run has no
    output recorded (runs of earlier versions)."""
    if base.output is None or new.output is None or not base.output.sha256 or not new.output.sha256:
        return None
    return base.output.sha256 != new.output.sha256


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
        "dirty": (run.meta.measured_commit.model_extra or {}).get("dirty")
        if run.meta.measured_commit
        else None,
        "code": (run.meta.model_extra or {}).get("code_under_test"),  # a transformers_source / ab side
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
    v2 = [(label, run) for label, run in (("BASE", base), ("NEW", new)) if from_benchmark_v2(run.meta)]
    warnings += [benchmark_v2_warning(label, run) for label, run in v2]
    if v2:
        # benchmark_v2 records the name of one GPU and no CPU: compare what both sides know.
        b_gpus, n_gpus = (
            {g.name for g in (m.environment.gpus if m.environment else [])} for m in (base.meta, new.meta)
        )
        if b_gpus != n_gpus:
            show_b, show_n = ", ".join(sorted(b_gpus)) or "none", ", ".join(sorted(n_gpus)) or "none"
            warnings.append(
                f"different hardware: GPUs {show_b} (BASE) vs {show_n} (NEW); the ratios mix the change with the machines"
            )
    elif b_env is not None and n_env is not None:
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
        if v2 and not all(key in run.meta.config for _, run in v2):
            continue  # a setting benchmark_v2 does not have (seed, sampling) is no difference
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
        if v2 and not all(key in run.meta.packages() for _, run in v2):
            continue  # benchmark_v2 records torch alone: the others are unknown there, not missing
        if b_pkg.get(key) != n_pkg.get(key):
            notes.append(f"{key} {b_pkg.get(key) or 'not installed'} -> {n_pkg.get(key) or 'not installed'}")
    for key in ("driver_version", "cuda_driver_version", "python"):
        b, n = getattr(b_env, key, None), getattr(n_env, key, None)
        if v2 and any(getattr(run.meta.environment, key, None) is None for _, run in v2):
            continue
        if b != n:
            notes.append(f"{key} {b} -> {n}")
    b_sha, n_sha = base.meta.commit_sha, new.meta.commit_sha
    if b_sha != n_sha:
        notes.append(f"measured commit {short_sha(b_sha)} -> {short_sha(n_sha)}")
    return warnings, notes


def benchmark_v2_warning(label: str, run: Run) -> str:
    """What a side read from transformers' benchmark_v2 results measured differently."""
    return (
        f"{label} is a benchmark_v2 run ({run.path}), measured otherwise than tfbench measures: each of "
        "its cells ran in one process, so its process-to-process noise is unknown and the verdicts lean "
        "on the other side's processes and on the calibration (or the assumed drift); its ttft and tpot "
        "are rebuilt from float32-rounded times (benchmark_v2's inter-token latency is (end - first "
        "token) / n, not tpot); its prompt is benchmark_v2's fixed English text cut to sequence_length "
        "tokens (fewer if the text is shorter), not tfbench's prompt of exactly sequence_length tokens"
    )


def short_sha(sha: str | None) -> str:
    return sha[:12] if sha else "unknown"


def compare_runs(
    base: Run,
    new: Run,
    thresholds: dict[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    drift: Drift | dict[str, Drift] | None = None,
) -> Comparison:
    """Compare NEW against BASE cell by cell.

    thresholds: per metric (keys of COMPARED_METRICS), a fraction (0.03 for 3%); default 0.05 each.
    drift: the run-to-run component, one for every metric or one per metric (a calibration); None:
    none when both runs come from one `tfbench ab` invocation, else the assumed one.
    """
    check_alpha(alpha)
    limits = resolve_thresholds(thresholds)
    warnings, notes = run_differences(base, new)
    together = same_invocation(base, new)
    fallback = NO_DRIFT if together else assumed_drift(new.meta.hardware)
    given = drift if isinstance(drift, dict) else dict.fromkeys(KEY_METRICS, drift or fallback)
    drifts = {}
    for metric in KEY_METRICS:
        d = given.get(metric) or fallback
        if together:  # one invocation, interleaved: no run drift, but a calibration's process variance
            d = replace(NO_DRIFT, process_var=d.process_var, process_df=d.process_df)
        drifts[metric] = d
    sources = sorted({d.source for d in drifts.values()})
    result = Comparison(
        base=_run_info(base),
        new=_run_info(new),
        alpha=float(alpha),
        thresholds=limits,
        method=METHOD,
        drift="; ".join(sources),
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
            result.cells.append(compare_cell(cell_id, b, n, limits, alpha, drifts))
    order = {c.cell_id: i for i, c in enumerate(result.cells)}
    result.cells.sort(key=lambda c: (VERDICT_ORDER[c.verdict], -_effect(c), order[c.cell_id]))
    changed = [c for c in result.cells if c.output_changed]
    if changed:
        result.notes.append(
            f"{len(changed)} cell(s) generated other tokens than in BASE (marked ≠ output): the "
            "verdicts are on speed only; see each cell's output in its record"
        )
    if base.cells and new.cells and not (result.cells or result.not_compared):
        result.warnings.append("the two runs have no cell in common: were they run from different configs?")
    return result


def check_alpha(alpha: Any) -> None:
    """UserError (exit 2) for a significance level that is not one."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1 (0.05 for 95% intervals), not {alpha!r}")


def exit_code(cmp: Comparison, strict: bool = False) -> int:
    """1 when any cell regressed (strict: also when a cell ok in BASE is in NEW but not ok), else 0."""
    if any(c.verdict == REGRESSION for c in cmp.cells):
        return EXIT_REGRESSION
    if strict and cmp.lost:
        return EXIT_REGRESSION
    return 0


def same_invocation(base: Run, new: Run) -> bool:
    """Both runs are the two sides of one `tfbench ab`, measured interleaved: they share the drift."""
    b, n = (base.meta.model_extra or {}).get("ab"), (new.meta.model_extra or {}).get("ab")
    return (
        isinstance(b, dict) and isinstance(n, dict) and b.get("id") is not None and b.get("id") == n.get("id")
    )
