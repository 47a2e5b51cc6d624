"""Compare two runs cell by cell: what got slower or faster, by how much, and how sure that is.

`tfbench compare BASE NEW` matches the cells of two run directories by cell id (a hash of what
defines the measurement, the same on every machine). For each cell measured (`ok`) in both and
each key metric it reports the ratio of medians NEW/BASE with a 95% confidence interval and a
verdict. Pure functions over the results files: no torch here.

Samples
-------
The raw per-run values of each cell record (`runs[i][metric]`), one per timed generate call, so
n = measurement_iterations on each side. Continuous batching cells time ttft and tpot per
request; the requests of one run share that run's batch and are not independent of each other,
so each run contributes the median over its requests (n stays the number of runs). A metric a
cell does not measure (continuous batching has no batch-level prefill/decode split) is left out.
Peak memory is one number per cell (`memory.peak_bytes`, the peak over all its runs): its ratio
is reported, but with one value per side there is nothing to test, so its verdict is always
"not tested" and it never decides a cell's verdict; it is flagged when beyond the threshold.

The test: Mann-Whitney U with a Hodges-Lehmann interval
--------------------------------------------------------
Significance is the two-sided Mann-Whitney U (Wilcoxon rank-sum) test of the two independent
samples. The interval inverts that same test (Hodges-Lehmann): on the log scale, where a code
change that makes a metric r times larger is a shift by log r, the 95% interval of the ratio is
exp of the (c+1)-th smallest and (c+1)-th largest of the m x n pairwise differences
log(new_j) - log(base_i), c being the largest U whose null probability P(U <= c) is below
alpha / 2. So "the interval excludes 1" and "p < alpha" are one statement and always agree.
Without ties and with at most 50 runs a side, the null distribution of U is exact (the
coefficients of the Gaussian binomial [m+n choose m]_q, counted with integers); otherwise it is
the normal approximation with tie and continuity corrections (as scipy.stats.mannwhitneyu's
"asymptotic" method; the tests pin p-values computed with scipy 1.17.1).

Why this rather than a bootstrap of the ratio of medians:

- Small samples are the rule (10 runs by default, 3 in quick configs). A percentile bootstrap
  of a median from 10 values takes a handful of distinct values and its interval is too narrow
  (more false alarms than alpha promises); from 3 values it still prints an "interval". The
  rank test's false-alarm rate on two samples of one distribution is at most alpha whatever the
  distribution's shape, and it tells when n is too small to ever be significant (3 runs against
  3: the smallest two-sided p is 0.1), which is reported as "insufficient data".
- Timing samples are skewed and carry outliers (a page fault, a late recompilation): ranks do
  not care how far out an outlier lies.
- Deterministic without resampling: the same two runs give the same report on every machine,
  no seed to carry. `seed` is accepted by `compare_runs` and ignored.
- Cheap: O(m n) per metric, so a matrix of thousands of cells compares in seconds, where 9,999
  bootstrap resamples per cell and metric take minutes.
- Ranks do not change under a monotone transformation: a latency and the throughput that is a
  constant over it get the same p-value and mirror-image intervals.
- No dependency beyond numpy: scipy (1.18 needs Python >= 3.12, the project supports 3.10) has
  the test but no Hodges-Lehmann interval, and the exact distribution is twenty lines.

The point estimate shown is the ratio of the medians (what the two runs' stats.p50 give); the
interval is the Hodges-Lehmann one, for the shift that moves one distribution onto the other.
With skewed, lopsided samples the two can disagree slightly; a verdict needs the interval on the
same side of 1 as the ratio.

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
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from bench.errors import UserError
from bench.results.stats import RUN_METRICS, UNITS
from bench.results.store import Skipped, _finite, read_json, scan_cells

# Metrics tested from raw per-run samples, in the order tables use.
KEY_METRICS = RUN_METRICS
MEMORY_METRIC = "peak_memory_bytes"  # memory.peak_bytes, one value per cell: ratio only
METRICS = (*KEY_METRICS, MEMORY_METRIC)
HIGHER_IS_BETTER = frozenset({"e2e_throughput", "decode_throughput", "prefill_throughput"})
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
MIN_SAMPLES = 3
EXACT_MAX = 50  # runs per side up to which the exact null distribution of U is used (when no ties)

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


# ---------------------------------------------------------------------------------------- loading


@dataclass
class Run:
    """A run directory as read from disk: run.json and every cell record, keyed by cell id."""

    path: Path
    meta: dict[str, Any]
    cells: dict[str, dict[str, Any]]
    skipped: list[Skipped] = field(default_factory=list)  # files in cells/ that are not records

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)


def load_run(path: str | os.PathLike[str]) -> Run:
    """A run directory, or a run pushed to a Hub dataset: hub:ORG/NAME@COMMIT (or @RUN_ID)."""
    text = os.fspath(path)
    if text.startswith("hub:"):
        repo, sep, ref = text[4:].partition("@")
        if not sep or not ref:
            raise UserError(
                f"{text!r}: a Hub run is hub:ORG/NAME@COMMIT (a measured commit sha, 7+) or @RUN_ID"
            )
        from bench.analysis.history import load_hub_run

        return load_hub_run(repo, ref)
    return _load_dir(path)


def _load_dir(path: str | os.PathLike[str]) -> Run:
    """Read `<output>/<run id>` (a merged sharded run has the same layout); UserError if it is not one."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such run directory")
    if not p.is_dir():
        raise UserError(f"{p} is not a tfbench run directory but a file; give <output>/<run id>")
    run_json = p / "run.json"
    if not run_json.is_file():
        if (p / "shards").is_dir():
            raise UserError(
                f"{p} is a sharded run whose shards have not been merged: run `tfbench merge {p}`"
            )
        inside = sorted(c.name for c in p.iterdir() if c.is_dir() and (c / "run.json").is_file())
        hint = f"; it holds run directories ({', '.join(inside[:5])}): give one of them" if inside else ""
        raise UserError(f"{p} is not a tfbench run directory: it has no run.json{hint}")
    try:
        meta = read_json(run_json)
    except (OSError, ValueError) as exc:
        raise UserError(f"{run_json} cannot be read as JSON: {exc}") from exc
    if not isinstance(meta, dict) or "run_id" not in meta:
        raise UserError(f"{run_json} is not a tfbench run.json (no run_id)")
    records, skipped = scan_cells(p / "cells")
    return Run(p, meta, {r["cell_id"]: r for r in records}, skipped)


# ------------------------------------------------------------------------------------- statistics


@lru_cache(maxsize=128)
def _exact_cdf(m: int, n: int) -> tuple[float, ...]:
    """P(U <= u) for u = 0..m*n under the null hypothesis, samples of sizes m and n, no ties.

    The number of arrangements with U = u is the coefficient of q^u in the Gaussian binomial
    [m+n choose m]_q = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i); exact integers throughout.
    """
    size = m * n + 1
    c = [0] * size
    c[0] = 1
    for i in range(1, m + 1):
        shift = n + i
        for k in range(size - 1, shift - 1, -1):  # times (1 - q^shift); terms past m*n never feed back
            c[k] -= c[k - shift]
        for k in range(i, size):  # divided by (1 - q^i)
            c[k] += c[k - i]
    total = math.comb(m + n, m)
    out, acc = [], 0
    for count in c:
        acc += count
        out.append(acc / total)
    return tuple(out)


@dataclass(frozen=True)
class RankTest:
    p_value: float
    ci_low: float | None  # of the ratio NEW/BASE; None when n is too small to ever reach p < alpha
    ci_high: float | None
    hodges_lehmann: float  # exp(median of the pairwise log differences)
    u: float  # pairs (base_i, new_j) with new_j > base_i, ties counted half
    exact: bool


def rank_test(base: list[float], new: list[float], alpha: float = DEFAULT_ALPHA) -> RankTest:
    """Two-sided Mann-Whitney U of NEW against BASE and the Hodges-Lehmann interval of the ratio.

    Values must be positive (times, rates); the test works on logarithms, which changes no rank.
    """
    x = np.log(np.asarray(base, dtype=np.float64))
    y = np.log(np.asarray(new, dtype=np.float64))
    m, n = x.size, y.size
    pairs = m * n
    diffs = np.sort((y[None, :] - x[:, None]).ravel())
    u = float(np.count_nonzero(diffs > 0) + 0.5 * np.count_nonzero(diffs == 0))
    _, counts = np.unique(np.concatenate([x, y]), return_counts=True)
    ties = counts[counts > 1].astype(np.float64)
    exact = ties.size == 0 and max(m, n) <= EXACT_MAX
    if exact:
        cdf = _exact_cdf(min(m, n), max(m, n))

        def lower(v: float) -> float:  # P(U <= v)
            return 0.0 if v < 0 else cdf[min(int(math.floor(v)), pairs)]
    else:
        total = m + n
        tie_term = float((ties**3 - ties).sum()) / (total * (total - 1))
        sigma = math.sqrt(max(pairs / 12.0 * ((total + 1) - tie_term), 0.0))
        mu = pairs / 2.0
        normal = NormalDist()

        def lower(v: float) -> float:
            if sigma == 0.0:
                return 1.0 if v >= mu else 0.0
            return normal.cdf((v + 0.5 - mu) / sigma)

    # P(U >= u) = P(U <= mn - u): the null distribution is symmetric.
    p_value = min(1.0, 2.0 * min(lower(u), lower(pairs - u)))
    # c: the largest U with P(U <= c) < alpha / 2 (a binary search: lower() is monotone).
    lo, hi = -1, pairs
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if lower(mid) < alpha / 2:
            lo = mid
        else:
            hi = mid - 1
    c = lo
    hl = float(np.exp(np.median(diffs)))
    if c < 0:
        return RankTest(p_value, None, None, hl, u, exact)
    return RankTest(p_value, float(np.exp(diffs[c])), float(np.exp(diffs[pairs - 1 - c])), hl, u, exact)


def _clean(values: Any) -> list[float]:
    """Positive finite numbers only (a None tpot, a zero time, a NaN stored as null are left out)."""
    out = []
    for v in values or []:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            out.append(float(v))
    return out


def samples(record: dict[str, Any], metric: str) -> list[float]:
    """One value per timed run; per-request metrics (continuous batching) as the median over the run's requests."""
    out: list[Any] = []
    for run in record.get("runs") or []:
        if not isinstance(run, dict):
            continue
        if metric not in run and isinstance(run.get("requests"), list):
            per_request = _clean(r.get(metric) for r in run["requests"] if isinstance(r, dict))
            out.append(float(np.median(per_request)) if per_request else None)
        else:
            out.append(run.get(metric))
    return _clean(out)


# ------------------------------------------------------------------------------------- comparison


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
    cell: dict[str, Any]
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


def _thresholds(given: dict[str, float] | None) -> dict[str, float]:
    out = dict.fromkeys(METRICS, DEFAULT_THRESHOLD)
    for key, value in (given or {}).items():
        if key not in out:
            raise UserError(f"threshold for unknown metric {key!r}; metrics: {', '.join(METRICS)}")
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
    cell_id: str, base: dict[str, Any], new: dict[str, Any], thresholds: dict[str, float], alpha: float
) -> CellComparison:
    metrics: dict[str, MetricComparison] = {}
    for metric in KEY_METRICS:
        b, n = samples(base, metric), samples(new, metric)
        if b or n:
            metrics[metric] = compare_metric(metric, b, n, thresholds[metric], alpha)
    b_mem = _clean([(base.get("memory") or {}).get("peak_bytes")])
    n_mem = _clean([(new.get("memory") or {}).get("peak_bytes")])
    if b_mem or n_mem:
        metrics[MEMORY_METRIC] = compare_metric(MEMORY_METRIC, b_mem, n_mem, thresholds[MEMORY_METRIC], alpha)
    verdicts = {m.verdict for m in metrics.values()}
    if REGRESSION in verdicts:
        verdict = REGRESSION
    elif IMPROVEMENT in verdicts:
        verdict = IMPROVEMENT
    elif UNCHANGED in verdicts:
        verdict = UNCHANGED
    else:
        verdict = INSUFFICIENT
    cell = new.get("cell") or base.get("cell") or {}
    return CellComparison(cell_id, str(cell.get("name") or cell_id), cell, verdict, metrics)


def _effect(c: CellComparison) -> float:
    """The largest change among the metrics that decided the verdict, for ordering."""
    sizes = [abs(math.log(m.ratio)) for m in c.metrics.values() if m.verdict == c.verdict and m.ratio]
    return max(sizes, default=0.0)


def _status(cell_id: str, base: dict[str, Any] | None, new: dict[str, Any] | None) -> CellStatus:
    cell = (new or base or {}).get("cell") or {}
    return CellStatus(
        cell_id=cell_id,
        name=str(cell.get("name") or cell_id),
        base_status=base.get("status") if base else None,
        new_status=new.get("status") if new else None,
        base_reason=base.get("reason") if base else None,
        new_reason=new.get("reason") if new else None,
    )


def _run_info(run: Run) -> dict[str, Any]:
    env = run.meta.get("environment") or {}
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "status": run.meta.get("status"),
        "measured_commit": (run.meta.get("measured_commit") or {}).get("sha"),
        "hardware": (run.meta.get("identity") or {}).get("hardware"),
        "packages": {k: v for k, v in (env.get("packages") or {}).items() if k in SOFTWARE_KEYS},
        "cells": len(run.cells),
    }


def _gpus(env: dict[str, Any]) -> list[str]:
    out = []
    for g in env.get("gpus") or []:
        mem = g.get("memory_total_bytes")
        out.append(f"{g.get('name', '?')}" + (f" ({mem / 2**30:.0f} GiB)" if mem else ""))
    return out


def run_differences(base: Run, new: Run) -> tuple[list[str], list[str]]:
    """(warnings, notes): hardware and measurement settings that differ warn; software is a note."""
    warnings: list[str] = []
    notes: list[str] = []
    b_env, n_env = base.meta.get("environment") or {}, new.meta.get("environment") or {}
    for label, b, n in (
        ("GPUs", _gpus(b_env), _gpus(n_env)),
        ("CPU", b_env.get("cpu"), n_env.get("cpu")),
        ("CPU count", b_env.get("cpu_count"), n_env.get("cpu_count")),
    ):
        if b != n:
            show_b = ", ".join(b) if isinstance(b, list) else b
            show_n = ", ".join(n) if isinstance(n, list) else n
            warnings.append(
                f"different hardware: {label} {show_b or 'none'} (BASE) vs {show_n or 'none'} (NEW); "
                "the ratios mix the change with the machines"
            )
    if not b_env or not n_env:
        b_hw = (base.meta.get("identity") or {}).get("hardware")
        n_hw = (new.meta.get("identity") or {}).get("hardware")
        if b_hw != n_hw:
            warnings.append(f"different hardware: {b_hw} (BASE) vs {n_hw} (NEW)")
    b_cfg, n_cfg = base.meta.get("config") or {}, new.meta.get("config") or {}
    for key in SETTINGS_KEYS:
        if key in b_cfg or key in n_cfg:
            b, n = b_cfg.get(key), n_cfg.get(key)
            if b != n:
                warnings.append(f"different measurement settings: {key} {b!r} (BASE) vs {n!r} (NEW)")
    for label, run in (("BASE", base), ("NEW", new)):
        status = run.meta.get("status")
        if status not in (None, "finished"):
            warnings.append(f"the {label} run is {status}, not finished: some cells may be missing")
        if run.meta.get("shard"):
            warnings.append(
                f"{label} is a single shard of a sharded run; compare the merged run for all cells"
            )
    b_pkg, n_pkg = b_env.get("packages") or {}, n_env.get("packages") or {}
    for key in SOFTWARE_KEYS:
        if b_pkg.get(key) != n_pkg.get(key):
            notes.append(f"{key} {b_pkg.get(key) or 'not installed'} -> {n_pkg.get(key) or 'not installed'}")
    for key in ("driver_version", "cuda_driver_version", "python"):
        if b_env.get(key) != n_env.get(key):
            notes.append(f"{key} {b_env.get(key)} -> {n_env.get(key)}")
    b_sha = (base.meta.get("measured_commit") or {}).get("sha")
    n_sha = (new.meta.get("measured_commit") or {}).get("sha")
    if b_sha != n_sha:
        notes.append(f"measured commit {_short(b_sha)} -> {_short(n_sha)}")
    return warnings, notes


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "unknown"


def compare_runs(
    base: Run,
    new: Run,
    thresholds: dict[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> Comparison:
    """Compare NEW against BASE cell by cell. `seed` is ignored: the method has no randomness.

    thresholds: per metric (keys of METRICS), a fraction (0.03 for 3%); default 0.05 each.
    """
    del seed  # accepted for callers that pass one; the rank test and its interval are exact
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise UserError(f"alpha must be between 0 and 1 (0.05 for 95% intervals), not {alpha!r}")
    limits = _thresholds(thresholds)
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
        rec = new.cells.get(cell_id) or base.cells.get(cell_id) or {}
        value = (rec.get("cell") or {}).get("index")
        return value if isinstance(value, int) else 0

    for cell_id in sorted(set(base.cells) | set(new.cells), key=lambda c: (index(c), c)):
        b, n = base.cells.get(cell_id), new.cells.get(cell_id)
        if n is None:
            result.only_base.append(_status(cell_id, b, None))
        elif b is None:
            result.only_new.append(_status(cell_id, None, n))
        elif b.get("status") != "ok" or n.get("status") != "ok":
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


# -------------------------------------------------------------------------------------- rendering


def headline(cmp: Comparison) -> str:
    counts = cmp.counts()

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    parts = [
        plural(counts[REGRESSION], "regression"),
        plural(counts[IMPROVEMENT], "improvement"),
        f"{counts[UNCHANGED]} unchanged",
    ]
    if counts[INSUFFICIENT]:
        parts.append(f"{counts[INSUFFICIENT]} with insufficient data")
    other = counts["only in base"] + counts["only in new"] + counts["not compared"]
    if other:
        parts.append(f"{other} not compared")
    return ", ".join(parts)


def fmt_ratio(m: MetricComparison | None, markup: str = "plain") -> str:
    """'1.102 [1.081, 1.124]': the ratio and its interval; the ratio alone for memory.

    markup: "plain", "markdown" (bold and a mark when the metric has a verdict) or "rich" (colours,
    the interval on a second line so that a terminal table stays narrow).
    """
    if m is None or m.ratio is None:
        return "-"
    ratio = f"{m.ratio:.3f}"
    if m.ci_low is not None and m.ci_high is not None:
        interval = f"[{m.ci_low:.3f}, {m.ci_high:.3f}]"
    elif m.verdict == INSUFFICIENT:
        interval = "(n too small)"
    else:
        interval = ""
    decided = m.verdict in (REGRESSION, IMPROVEMENT)
    if markup == "rich":
        style = {REGRESSION: "bold red", IMPROVEMENT: "bold green"}.get(m.verdict, "")
        if m.verdict == NOT_TESTED and m.beyond_threshold:
            style = "yellow"
        text = f"[{style}]{ratio}[/{style}]" if style else ratio
        if m.ci_low is not None and m.ci_high is not None:
            interval = f"{m.ci_low:.3f}-{m.ci_high:.3f}"
        return text + (f"\n[dim]{escape(interval)}[/dim]" if interval else "")
    text = f"{ratio} {interval}".strip()
    if markup == "markdown":
        if decided:
            text = f"**{text}** {'🔴' if m.verdict == REGRESSION else '🟢'}"
        elif m.verdict == NOT_TESTED and m.beyond_threshold:
            text += " ⚠️"
    return text


VERDICT_STYLE = {REGRESSION: "bold red", IMPROVEMENT: "bold green", INSUFFICIENT: "yellow", UNCHANGED: "dim"}
VERDICT_MARK = {REGRESSION: "🔴 ", IMPROVEMENT: "🟢 ", INSUFFICIENT: "⚪ ", UNCHANGED: ""}


def _columns(cmp: Comparison) -> list[str]:
    """The metrics that appear in at least one compared cell, in table order."""
    present = {m for c in cmp.cells for m in c.metrics}
    return [m for m in METRICS if m in present]


def _status_text(s: CellStatus) -> tuple[str, str]:
    b = s.base_status or "absent"
    n = s.new_status or "absent"
    return b, n


def _threshold_text(cmp: Comparison) -> str:
    default = cmp.thresholds.get("e2e_latency", DEFAULT_THRESHOLD)
    special = [f"{LABELS[m]} {t:.1%}".replace(".0%", "%") for m, t in cmp.thresholds.items() if t != default]
    text = f"{default:.1%}".replace(".0%", "%")
    return text + (f" ({', '.join(special)})" if special else "")


def to_table(cmp: Comparison) -> Table:
    """The comparison for a terminal: one row per cell, compared cells first, the others after."""
    columns = _columns(cmp)
    caption = [f"NEW/BASE medians, 95% interval below; verdicts need p < {cmp.alpha:g} and a change "]
    caption[0] += f"beyond {_threshold_text(cmp)}; peak memory: ratio only"
    caption += [f"[yellow]warning:[/yellow] {escape(w)}" for w in cmp.warnings]
    caption += [f"[dim]{escape(n)}[/dim]" for n in cmp.notes]
    table = Table(
        title=f"{escape(cmp.base['run_id'])} -> {escape(cmp.new['run_id'])}: {headline(cmp)}",
        caption="\n".join(caption),
        header_style="bold",
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("cell\n[dim]cell id[/dim]", overflow="fold", min_width=12)
    table.add_column("verdict", no_wrap=True)
    for metric in columns:
        table.add_column(LABELS[metric], justify="right")
    for c in cmp.cells:
        style = VERDICT_STYLE[c.verdict]
        table.add_row(
            f"{escape(c.name)}\n[dim]{c.cell_id[:8]}[/dim]",
            f"[{style}]{c.verdict}[/{style}]",
            *(fmt_ratio(c.metrics.get(m), "rich") for m in columns),
        )
    for label, rows in (
        ("only in BASE", cmp.only_base),
        ("only in NEW", cmp.only_new),
        ("not compared", cmp.not_compared),
    ):
        for s in rows:
            b, n = _status_text(s)
            text = label if label != "not compared" else f"{b} -> {n}"
            table.add_row(
                f"{escape(s.name)}\n[dim]{s.cell_id[:8]}[/dim]",
                f"[yellow]{escape(text)}[/yellow]",
                *(["-"] * len(columns)),
            )
    return table


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_cells_table(cells: list[CellComparison], columns: list[str], limit: int) -> list[str]:
    lines = [
        "| cell | verdict | " + " | ".join(LABELS[m] for m in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for c in cells[:limit]:
        metrics = " | ".join(fmt_ratio(c.metrics.get(m), "markdown") for m in columns)
        lines.append(f"| `{_md(c.name)}` | {VERDICT_MARK[c.verdict]}{c.verdict} | {metrics} |")
    if len(cells) > limit:
        lines.append(f"\n{len(cells) - limit} more not shown (see the JSON output).")
    return lines


def to_markdown(cmp: Comparison, max_rows: int = 200) -> str:
    """A PR comment: the headline, the cells with a verdict other than unchanged, then the rest."""
    lines = [f"### tfbench compare: {headline(cmp)}", ""]

    def describe(info: dict[str, Any]) -> str:
        pkgs = info.get("packages") or {}
        extra = [f"commit `{_short(info.get('measured_commit'))}`"] if info.get("measured_commit") else []
        extra += [f"{k} {pkgs[k]}" for k in ("transformers", "torch") if pkgs.get(k)]
        return f"`{_md(info['run_id'])}`" + (f" ({', '.join(extra)})" if extra else "")

    lines += [f"BASE {describe(cmp.base)} → NEW {describe(cmp.new)}", ""]
    for w in cmp.warnings:
        lines.append(f"> ⚠️ {_md(w)}")
    if cmp.warnings:
        lines.append("")
    columns = _columns(cmp)
    notable = [c for c in cmp.cells if c.verdict != UNCHANGED]
    unchanged = [c for c in cmp.cells if c.verdict == UNCHANGED]
    if notable:
        lines += _md_cells_table(notable, columns, max_rows)
        lines.append("")
    if unchanged:
        lines += [f"<details><summary>{len(unchanged)} unchanged</summary>", ""]
        lines += _md_cells_table(unchanged, columns, max_rows)
        lines += ["", "</details>", ""]
    others = cmp.only_base + cmp.only_new + cmp.not_compared
    if others:
        lines += ["#### Cells not compared", "", "| cell | BASE | NEW | reason |", "|---|---|---|---|"]
        for s in others[:max_rows]:
            b, n = _status_text(s)
            reason = s.new_reason or s.base_reason or ""
            lines.append(f"| `{_md(s.name)}` | {b} | {n} | {_md(reason[:200])} |")
        if len(others) > max_rows:
            lines.append(f"\n{len(others) - max_rows} more not shown (see the JSON output).")
        lines.append("")
    if not cmp.cells and not others:
        lines += ["No cells in either run.", ""]
    lines.append(
        f"Ratios are NEW/BASE medians with a 95% interval (Mann-Whitney U / Hodges-Lehmann); a verdict "
        f"needs p < {cmp.alpha:g} and a change beyond {_threshold_text(cmp)}. Latencies: above 1 is slower; "
        "throughputs: below 1 is slower. Peak memory is one value per run: its ratio is not tested"
        + (" (⚠️ beyond the threshold)." if any(_mem_flag(c) for c in cmp.cells) else ".")
    )
    if cmp.notes:
        lines += ["", "Differences: " + "; ".join(_md(n) for n in cmp.notes) + "."]
    return "\n".join(lines) + "\n"


def _mem_flag(c: CellComparison) -> bool:
    m = c.metrics.get(MEMORY_METRIC)
    return bool(m and m.beyond_threshold)


def to_json(cmp: Comparison) -> dict[str, Any]:
    """Everything, JSON-serializable (non-finite numbers as null)."""
    data = asdict(cmp)
    data["summary"] = {"headline": headline(cmp), "counts": cmp.counts(), "exit_code": exit_code(cmp)}
    return _finite(data)
