"""The noise model behind every verdict: timed runs inside processes, processes inside a run, runs
on a machine that drifts.

Why the process is the unit
---------------------------
The timed runs of one worker process share its memory layout, its allocator state, its thread
placement and whatever the machine was doing during those seconds. Their spread is the small,
within-process noise. A fresh process lands elsewhere: on a shared 2-core VM the same cell moves
2-7% from one process to the next, far more than its runs move inside one process. A test that
treats the runs of one process per side as independent samples (what a rank test on raw runs
does) measures only the within-process noise, and calls most unchanged cells changed.

So each side of a comparison is summarised per process: y_k = log(median of process k's runs).
The sample variance of the y_k over the P processes of a side estimates the variance of one
process's value, within-process noise of its median included, without a model of either part.
The side's level is the mean of its y_k, with variance s^2 / P.

The run level: drift
--------------------
Two runs made at different times also differ by what the machine did in between (another
tenant, a clock policy, a thermal state), and that offset is shared by every cell of a run:
replication inside a run cannot see it. It is a variance component of its own, `Drift`, learned
per hardware from repeated runs (`tfbench calibrate`), or assumed where nothing is known (and the
verdict says so). `tfbench ab` measures both sides in one invocation with their processes
interleaved in time, so they share the drift and it cancels: there the component is zero.

The test
--------
d = mean(y_new) - mean(y_base) is the log of the ratio NEW/BASE (of geometric means of process
medians). Its variance is the sum of independent components,

    V = s_new^2 / P_new + s_base^2 / P_base + 2 * drift

each with its degrees of freedom (P - 1 for a side's sample variance; a calibration's own for the
drift). The test is Welch's t test on the process values, with the Welch-Satterthwaite degrees of
freedom extended to every component: df = V^2 / sum(v_i^2 / df_i). Without drift this is exactly
scipy.stats.ttest_ind(equal_var=False) on the process values, which the tests check. The 1 - alpha
interval is d +- t(1 - alpha/2, df) * sqrt(V), on the log scale; its exp is the ratio's interval.

Why this rather than a hierarchical bootstrap or a mixed model: with 3 to 8 processes a side, a
bootstrap of processes has too few distinct resamples and its intervals are too narrow (more
false alarms than alpha), and a mixed model's variance components are unstable at that size and
need an iterative fit. The process-level t test is exact under normality of the process values
(log-medians of several runs are close to normal), it has the right false-alarm rate at any P >= 2
(checked on simulated A/A data in the tests and measured on real A/A runs in BENCHMARKS.md), and
the drift component enters it as one more variance term.

Minimum detectable effect: the change that would be found with 80% power at this alpha,
(t(1 - alpha/2, df) + t(0.8, df)) * sqrt(V), shown as a fraction.

A side with one process (runs written before `processes` existed, or `processes: 1`) has no
between-process variance of its own: a calibration of the hardware supplies one, else the metric
cannot be judged (inconclusive, saying why). Pure functions; no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

POWER = 0.8
# What a run level is assumed to drift where no calibration of the hardware is known: above the
# largest drift between whole runs measured on a shared 2-core VM (4.2% for ttft, BENCHMARKS.md),
# where 3% still let 10% of A/A cells through. Conservative on purpose: a verdict across runs
# without a calibration says so, and runs measured in one invocation need no such assumption.
ASSUMED_DRIFT_SD = 0.05


@dataclass(frozen=True)
class Drift:
    """The run-to-run variance of a cell's log level on one machine.

    run_var: shared by every cell of a run (the machine's state); cell_var: of one cell in one run
    beyond what its processes show (cell x run interaction). Both on the log scale."""

    run_var: float
    cell_var: float = 0.0
    df: float = math.inf  # of the estimate (inf: assumed, not estimated)
    source: str = "assumed"
    process_var: float | None = None  # a typical between-process variance, for one-process sides
    process_df: float = math.inf

    @property
    def var(self) -> float:
        return self.run_var + self.cell_var


NO_DRIFT = Drift(0.0, 0.0, math.inf, "none: both sides measured in one invocation, interleaved")


def assumed_drift(hardware: str) -> Drift:
    return Drift(
        ASSUMED_DRIFT_SD**2,
        0.0,
        math.inf,
        f"assumed {ASSUMED_DRIFT_SD:.0%} between runs: no calibration for {hardware} "
        "(run `tfbench calibrate`, or compare in one invocation with `tfbench ab`)",
    )


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the log of each process's median, and the runs behind them."""

    values: tuple[float, ...]
    runs: int

    @property
    def processes(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def var(self) -> float | None:
        return statistics.variance(self.values) if len(self.values) > 1 else None


def side(process_medians: Sequence[float], runs: int) -> Side | None:
    """A side from each process's median (positive values); None when no process measured it."""
    values = tuple(math.log(v) for v in process_medians if v > 0 and math.isfinite(v))
    return Side(values, runs) if values else None


@dataclass(frozen=True)
class Estimate:
    log_ratio: float  # mean log NEW - mean log BASE
    se: float
    df: float
    p_value: float
    ci_low: float  # of the ratio NEW/BASE
    ci_high: float
    mde: float  # the change found with 80% power at alpha, as a fraction (0.05: 5%)
    between_base: float | None  # between-process CV of each side (sd of the log process values)
    between_new: float | None

    @property
    def ratio(self) -> float:
        return math.exp(self.log_ratio)


class CannotEstimate(ValueError):
    """Too little data to estimate the noise (said to the user as the reason)."""


def _component(s: Side, drift: Drift) -> tuple[float, float]:
    """(variance of the side's mean, its degrees of freedom)."""
    if s.var is not None:
        return s.var / s.processes, s.processes - 1
    if drift.process_var is not None:
        return drift.process_var / s.processes, drift.process_df
    raise CannotEstimate(
        "one process on a side: the noise between processes is unknown (measure with processes >= 2, "
        "or calibrate this hardware with `tfbench calibrate`)"
    )


def estimate(base: Side, new: Side, drift: Drift, alpha: float = 0.05) -> Estimate:
    """The ratio NEW/BASE with its interval, p-value and minimum detectable effect (see the module)."""
    parts = [_component(base, drift), _component(new, drift)]
    if drift.var > 0:
        parts.append((2.0 * drift.var, drift.df))
    total = math.fsum(v for v, _ in parts)
    d = new.mean - base.mean
    if total <= 0.0:
        # Identical values on both sides and no drift: nothing varies, nothing to test.
        p = 1.0 if d == 0 else 0.0
        return Estimate(d, 0.0, math.inf, p, math.exp(d), math.exp(d), 0.0, 0.0, 0.0)
    denominator = math.fsum(v * v / df for v, df in parts if v > 0 and math.isfinite(df))
    df = total * total / denominator if denominator > 0 else math.inf
    between = [math.sqrt(s.var) if s.var is not None else None for s in (base, new)]
    return t_estimate(d, math.sqrt(total), df, alpha, between[0], between[1])


def t_estimate(
    d: float,
    se: float,
    df: float,
    alpha: float = 0.05,
    between_base: float | None = None,
    between_new: float | None = None,
) -> Estimate:
    """The Estimate of a log ratio d with standard error se (> 0) on df degrees of freedom."""
    p = float(2.0 * stats.t.sf(abs(d / se), df))
    q = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    mde = (q + float(stats.t.ppf(POWER, df))) * se
    return Estimate(
        log_ratio=d,
        se=se,
        df=df,
        p_value=min(1.0, p),
        ci_low=math.exp(d - q * se),
        ci_high=math.exp(d + q * se),
        mde=math.expm1(mde),
        between_base=between_base,
        between_new=between_new,
    )


def estimate_drift(levels: Sequence[Sequence[tuple[float, float]]]) -> tuple[float, float, int]:
    """(run variance, cell x run variance, degrees of freedom) from repeated runs of one matrix.

    levels[r][c] = (the mean log process value of cell c in run r, its variance within the run:
    s^2 / P). Every run must hold the same cells in the same order. Method of moments: the run
    offsets u_r are the means over cells of the centred levels; their variance, less what the
    within-run noise puts in a mean of C cells, is the run variance. What is left in each cell's
    centred level beyond u_r and its own within-run noise is the cell x run variance.
    """
    runs = len(levels)
    cells = len(levels[0]) if runs else 0
    if runs < 2 or cells < 1 or any(len(r) != cells for r in levels):
        raise CannotEstimate("calibration needs at least 2 runs of the same cells")
    cell_means = [math.fsum(levels[r][c][0] for r in range(runs)) / runs for c in range(cells)]
    centred = [[levels[r][c][0] - cell_means[c] for c in range(cells)] for r in range(runs)]
    offsets = [math.fsum(row) / cells for row in centred]
    within = math.fsum(w for row in levels for _, w in row) / (runs * cells)
    # Var(u_r) = run_var + (within + cell_var) / C, estimated with runs - 1 degrees of freedom.
    offset_var = statistics.variance(offsets)
    resid = [centred[r][c] - offsets[r] for r in range(runs) for c in range(cells)]
    resid_df = (runs - 1) * (cells - 1)
    cell_var = 0.0
    if resid_df > 0:
        resid_var = math.fsum(x * x for x in resid) / resid_df
        cell_var = max(0.0, resid_var - within)
    run_var = max(0.0, offset_var - (within + cell_var) / cells)
    return run_var, cell_var, runs - 1
