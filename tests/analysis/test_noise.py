"""The noise model (bench.analysis.noise): checked against scipy's Welch test, published t tables,
and its own false-alarm rate on simulated A/A data with the structure real runs have (a random
effect per process, per run, and noise per timed run)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.analysis.noise import (
    NO_DRIFT,
    CannotEstimate,
    Drift,
    estimate,
    estimate_drift,
    side,
)
from benchmarks.ranktest import rank_test


def _side(values, runs=None):
    return side(values, runs or len(values) * 3)


def test_without_drift_it_is_welchs_test_on_the_process_values():
    rng = np.random.default_rng(7)
    for m, n in ((2, 2), (3, 5), (4, 4), (8, 3), (6, 10)):
        a = np.exp(rng.normal(0.0, 0.04, m))
        b = np.exp(rng.normal(0.02, 0.06, n))
        got = estimate(_side(a), _side(b), NO_DRIFT, alpha=0.05)
        ref = stats.ttest_ind(np.log(b), np.log(a), equal_var=False)
        assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9)
        assert got.df == pytest.approx(ref.df, rel=1e-9)
        low, high = ref.confidence_interval(0.95)
        assert math.log(got.ci_low) == pytest.approx(low, rel=1e-9, abs=1e-12)
        assert math.log(got.ci_high) == pytest.approx(high, rel=1e-9, abs=1e-12)


def test_interval_width_follows_the_published_t_table():
    # Equal variances and sizes: df = 2(P - 1); t(0.975, 8) = 2.306 and t(0.975, 4) = 2.776.
    for per_side, t975 in ((5, 2.306), (3, 2.776)):
        base = [math.exp(x) for x in np.linspace(-0.02, 0.02, per_side)]
        got = estimate(_side(base), _side(base), NO_DRIFT)
        assert got.df == pytest.approx(2 * (per_side - 1))
        half = math.log(got.ci_high)
        assert half / got.se == pytest.approx(t975, abs=5e-4)


def test_drift_widens_the_interval_and_enters_the_degrees_of_freedom():
    rng = np.random.default_rng(1)
    a, b = np.exp(rng.normal(0, 0.02, 5)), np.exp(rng.normal(0, 0.02, 5))
    plain = estimate(_side(a), _side(b), NO_DRIFT)
    drifted = estimate(_side(a), _side(b), Drift(0.03**2, 0.0, math.inf, "test"))
    assert drifted.se == pytest.approx(math.sqrt(plain.se**2 + 2 * 0.03**2))
    assert drifted.ci_high / drifted.ci_low > plain.ci_high / plain.ci_low
    assert drifted.df > plain.df  # a component known exactly (df = inf) adds certainty about V
    assert drifted.mde > plain.mde


def test_one_process_needs_a_calibrated_process_variance():
    one, many = _side([1.0]), _side([1.0, 1.02, 0.99])
    with pytest.raises(CannotEstimate, match="one process"):
        estimate(one, many, NO_DRIFT)
    calibrated = Drift(0.0, 0.0, math.inf, "test", process_var=0.02**2, process_df=40)
    got = estimate(one, many, calibrated)
    assert 0 < got.p_value <= 1 and got.mde > 0


def _hierarchical(rng, level, processes, runs, between=0.04, within=0.01, run_offset=0.0):
    """Process medians of one side: a random effect per process, noise per timed run."""
    medians = []
    for _ in range(processes):
        effect = rng.normal(0, between)
        medians.append(float(np.median(np.exp(level + run_offset + effect + rng.normal(0, within, runs)))))
    return medians


def test_false_alarm_rate_on_simulated_aa_data_is_alpha_where_a_rank_test_on_runs_is_not():
    """The structure that made compare cry wolf: the process effect (4%) dwarfs the noise between
    runs of one process (1%). Judged per process, A/A false alarms stay at alpha; a rank test on
    the timed runs of one process per side (the old method) fires most of the time."""
    rng = np.random.default_rng(2026)
    trials, alarms, naive = 2000, 0, 0
    for _ in range(trials):
        a = _hierarchical(rng, 0.0, processes=4, runs=3)
        b = _hierarchical(rng, 0.0, processes=4, runs=3)
        alarms += estimate(_side(a, 12), _side(b, 12), NO_DRIFT).p_value < 0.05
    for _ in range(300):
        one_a = np.exp(rng.normal(0, 0.04) + rng.normal(0, 0.01, 10))
        one_b = np.exp(rng.normal(0, 0.04) + rng.normal(0, 0.01, 10))
        naive += rank_test(list(one_a), list(one_b)).p_value < 0.05
    rate = alarms / trials
    # Binomial 99.9% band around 5% for 2000 trials: about 3.4% to 6.6%.
    assert 0.034 < rate < 0.066, rate
    assert naive / 300 > 0.5


def test_false_alarm_rate_across_runs_holds_with_the_drift_component():
    """Two runs at different times: every cell of a run shares an offset (3%). Without the drift
    component the test fires far too often; with it, at alpha."""
    rng = np.random.default_rng(11)
    drift = Drift(0.03**2, 0.0, math.inf, "known")
    trials, with_drift, without = 2000, 0, 0
    for _ in range(trials):
        a = _hierarchical(rng, 0.0, 4, 3, run_offset=rng.normal(0, 0.03))
        b = _hierarchical(rng, 0.0, 4, 3, run_offset=rng.normal(0, 0.03))
        with_drift += estimate(_side(a, 12), _side(b, 12), drift).p_value < 0.05
        without += estimate(_side(a, 12), _side(b, 12), NO_DRIFT).p_value < 0.05
    assert 0.034 < with_drift / trials < 0.066, with_drift / trials
    assert without / trials > 0.15


def test_power_a_ten_percent_slowdown_is_found():
    rng = np.random.default_rng(5)
    found = 0
    for _ in range(500):
        a = _hierarchical(rng, 0.0, 4, 3, between=0.02)
        b = _hierarchical(rng, math.log(1.10), 4, 3, between=0.02)
        e = estimate(_side(a, 12), _side(b, 12), NO_DRIFT)
        found += e.p_value < 0.05 and e.ratio > 1.05
    assert found / 500 > 0.95


def test_drift_is_recovered_from_repeated_runs():
    rng = np.random.default_rng(3)
    runs, cells, run_sd, cell_sd = 12, 20, 0.03, 0.01
    truth = rng.normal(0, 0.5, cells)
    levels = []
    for _ in range(runs):
        offset = rng.normal(0, run_sd)
        row = []
        for c in range(cells):
            values = _hierarchical(rng, truth[c] + offset + rng.normal(0, cell_sd), 4, 3, between=0.02)
            logs = np.log(values)
            row.append((float(logs.mean()), float(logs.var(ddof=1) / len(logs))))
        levels.append(row)
    run_var, cell_var, df = estimate_drift(levels)
    assert df == runs - 1
    assert 0.5 * run_sd < math.sqrt(run_var) < 1.6 * run_sd
    assert math.sqrt(cell_var) < 0.02
    with pytest.raises(CannotEstimate):
        estimate_drift(levels[:1])
