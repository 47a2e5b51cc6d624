"""Per-run metrics as the README's "What is measured" defines them (e2e, ttft, tpot, itl and the three
throughputs), and their summary statistics. Pure functions; the metric table is in records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.results.records import METRICS, STAT_NAMES


def summarize(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """n, mean, std (sample, ddof=1), min, p50, p90, p95, p99, max; None values are left out."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {name: (0 if name == "n" else None) for name in STAT_NAMES}
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min": float(arr.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(arr.max()),
    }


def run_metrics(
    e2e: float, token_times: Sequence[float], batch_size: int, sequence_length: int
) -> dict[str, Any]:
    """Metrics of one generate call from its e2e latency and per-token times (seconds from the start).

    token_times[k] is when generated token k+1 was ready, for every sequence of the batch at once.
    """
    n = len(token_times)
    if n == 0:
        raise ValueError("a run without generated tokens has no metrics")
    return {
        **timing_metrics(e2e, float(token_times[0]), n, batch_size, sequence_length),
        "itl": [float(b - a) for a, b in zip(token_times, token_times[1:])],
    }


def timing_metrics(
    e2e: float, ttft: float, n: int, batch_size: int, sequence_length: int
) -> dict[str, float | None]:
    """The metrics of one generate call that its e2e latency, first-token time and token count
    define (everything but itl, which needs every token's time)."""
    decode_time = e2e - ttft
    return {
        "e2e_latency": float(e2e),
        "ttft": ttft,
        "tpot": decode_time / (n - 1) if n > 1 else None,
        "e2e_throughput": batch_size * n / e2e if e2e > 0 else None,
        "decode_throughput": batch_size * (n - 1) / decode_time if n > 1 and decode_time > 0 else None,
        "prefill_throughput": batch_size * sequence_length / ttft if ttft > 0 else None,
    }


def summarize_runs(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Statistics of every metric over runs; itl pools the gaps of all runs into one distribution."""
    out = {}
    for metric in METRICS:
        if metric == "itl":
            values = [gap for run in runs for gap in run.get("itl", [])]
        else:
            values = [run.get(metric) for run in runs]
        out[metric] = summarize(values)
    return out


def gaps(times: Sequence[float]) -> list[float]:
    """The inter-token latencies of one sequence: each gap between consecutive token times."""
    return [b - a for a, b in zip(times, times[1:])]


def cell_stats(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Statistics of every metric over a cell's raw runs, as the record stores them.

    Plain generate: one value per run, itl over every token gap. Continuous batching (runs hold
    requests): e2e latency and throughput per run, ttft, tpot and itl per request; prefill and
    decode of different requests interleave, so no batch-level split of those exists.
    Where the runs come from several worker processes (a `process` key), each metric also gets
    the median of each process (`process_p50s`) and the between-process coefficient of variation
    (`process_cv`: the standard deviation of the log process medians).
    """
    if any(isinstance(r.get("requests"), list) for r in runs):
        reqs = [q for r in runs for q in r.get("requests") or []]
        out = {
            "e2e_latency": summarize([r.get("e2e_latency") for r in runs]),
            "ttft": summarize([q.get("ttft") for q in reqs]),
            "tpot": summarize([q.get("tpot") for q in reqs]),
            "itl": summarize([g for q in reqs for g in gaps(q.get("token_times") or [])]),
            "e2e_throughput": summarize([r.get("e2e_throughput") for r in runs]),
            "decode_throughput": summarize([]),
            "prefill_throughput": summarize([]),
        }
    else:
        out = summarize_runs([{**r, "itl": gaps(r.get("token_times") or [])} for r in runs])
    processes = sorted({r.get("process") or 0 for r in runs})
    if len(processes) > 1:
        for metric in METRICS:
            if metric == "itl":
                continue
            medians = []
            for k in processes:
                values = [v for r in runs if (r.get("process") or 0) == k for v in _run_values(r, metric)]
                if values:
                    medians.append(float(np.median(values)))
            out[metric]["process_p50s"] = medians
            positive = [m for m in medians if m > 0]
            out[metric]["process_cv"] = float(np.std(np.log(positive), ddof=1)) if len(positive) > 1 else None
    return out


def _run_values(run: dict[str, Any], metric: str) -> list[float]:
    """A run's value of a metric; per-request metrics as the median over the run's requests."""
    value = run.get(metric)
    if value is None and isinstance(run.get("requests"), list):
        per_request = [q.get(metric) for q in run["requests"] if q.get(metric) is not None]
        return [float(np.median(per_request))] if per_request else []
    return [] if value is None else [float(value)]
