"""Metrics and statistics against hand-computed figures."""

from __future__ import annotations

import math

import pytest

from bench.results.stats import METRICS, STAT_NAMES, run_metrics, summarize, summarize_runs


def test_summarize_hand_computed():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["n"] == 5
    assert s["mean"] == 3.0
    assert math.isclose(s["std"], math.sqrt(2.5))  # sample std, ddof=1
    assert (s["min"], s["max"]) == (1.0, 5.0)
    assert s["p50"] == 3.0
    assert math.isclose(s["p90"], 4.6)  # linear interpolation between order statistics
    assert math.isclose(s["p95"], 4.8)
    assert math.isclose(s["p99"], 4.96)


def test_summarize_empty_and_single():
    empty = summarize([])
    assert empty["n"] == 0 and all(empty[k] is None for k in STAT_NAMES if k != "n")
    one = summarize([0.25])
    assert one["n"] == 1 and one["std"] == 0.0 and one["p99"] == 0.25


def test_summarize_ignores_missing_values():
    assert summarize([None, 2.0, None, 4.0])["n"] == 2


def test_run_metrics_follow_the_definitions():
    # 4 tokens at 0.1, 0.15, 0.2, 0.25 s; the call returned at 0.26 s; batch 2, prompt 8.
    m = run_metrics(0.26, [0.1, 0.15, 0.2, 0.25], batch_size=2, sequence_length=8)
    assert m["ttft"] == 0.1
    assert math.isclose(m["tpot"], (0.26 - 0.1) / 3)
    assert m["itl"] == pytest.approx([0.05, 0.05, 0.05])
    assert math.isclose(m["e2e_throughput"], 2 * 4 / 0.26)
    assert math.isclose(m["decode_throughput"], 2 * 3 / 0.16)
    assert math.isclose(m["prefill_throughput"], 2 * 8 / 0.1)
    assert math.isclose(m["ttft"] + 3 * m["tpot"], m["e2e_latency"])


def test_single_token_has_no_tpot():
    m = run_metrics(0.2, [0.19], batch_size=1, sequence_length=4)
    assert m["tpot"] is None and m["itl"] == [] and m["decode_throughput"] is None


def test_no_tokens_is_an_error():
    with pytest.raises(ValueError):
        run_metrics(0.1, [], 1, 1)


def test_summarize_runs_pools_itl():
    runs = [run_metrics(1.0, [0.1, 0.3, 0.6], 1, 4), run_metrics(2.0, [0.2, 0.4], 1, 4)]
    stats = summarize_runs(runs)
    assert set(stats) == set(METRICS)
    assert stats["itl"]["n"] == 3
    assert stats["e2e_latency"]["n"] == 2
    assert stats["ttft"]["mean"] == pytest.approx(0.15)
