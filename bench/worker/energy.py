"""Energy from GPU telemetry: joules between two marks, per timed run and per generated token, and
the power samples integrated over time where a GPU has no energy counter.

The energy counter (Volta and later) is the reference; where it is missing, power samples are
integrated (trapezoids, the nearest power held outside the samples). On recent GPUs
nvmlDeviceGetPowerUsage may be an average over up to a second, so that integral smooths short runs;
the telemetry's "energy_counter_update_s" shows how often the counter moved.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# (times, watts, joules since the first sample) at each sample with a power value
PowerCurve = tuple[list[float], list[float], list[float]]


# --------------------------------------------------------------------------------------------
# Power samples integrated over time


def cumulative_energy(t: list[float], power_mw: list[float]) -> PowerCurve | None:
    """(times, watts, joules since the first) at each sample with a power value: the trapezoid integral."""
    times = [ti for ti, p in zip(t, power_mw) if p == p]
    watts = [p / 1e3 for p in power_mw if p == p]
    if not times:
        return None
    cum = [0.0]
    for k in range(1, len(times)):
        cum.append(cum[-1] + (times[k] - times[k - 1]) * (watts[k] + watts[k - 1]) / 2)
    return times, watts, cum


def integral_at(curve: PowerCurve, x: float) -> float:
    """The cumulative integral at time x: interpolated between samples, the nearest power held outside."""
    t, watts, cum = curve
    k = bisect.bisect_right(t, x) - 1
    if k < 0:
        return cum[0] - (t[0] - x) * watts[0]
    if k >= len(t) - 1:
        return cum[-1] + (x - t[-1]) * watts[-1]
    span = t[k + 1] - t[k]
    return cum[k] + (cum[k + 1] - cum[k]) * ((x - t[k]) / span if span > 0 else 0.0)


def update_period(t: list[float], energy: list[float]) -> float | None:
    """Median time between observed changes of the energy counter (its effective resolution)."""
    changes = [t[k] for k in range(1, len(t)) if energy[k] == energy[k] and energy[k] != energy[k - 1]]
    if len(changes) < 3:
        return None
    return statistics.median([b - a for a, b in zip(changes, changes[1:])])


# --------------------------------------------------------------------------------------------
# Energy per mark interval, per run, per token


def run_labels(i: int) -> tuple[str, str]:
    """The labels of the marks around timed run i (Sampler.around_run)."""
    return f"run_{i}_start", f"run_{i}_end"


def energy_between(marks: Sequence[Mapping[str, Any]], start_label: str, end_label: str) -> dict[str, Any]:
    """Joules between two marks: {"devices": [J|None], "total_j": J|None, "seconds", "source"}.

    From the energy counter where both marks have it, else from the power samples integrated over
    time (Sampler.stop adds that to the marks), else None. Labels should be unique; the last one wins.
    """
    by = {m["label"]: m for m in marks}
    a, b = by.get(start_label), by.get(end_label)
    if a is None or b is None:
        return {"devices": [], "total_j": None, "seconds": None, "source": None}
    ea, eb = a.get("energy_mj") or [], b.get("energy_mj") or []
    pa, pb = a.get("power_integral_j") or [], b.get("power_integral_j") or []
    n = max(len(ea), len(eb), len(pa), len(pb))
    per: list[float | None] = []
    sources = set()
    for d in range(n):
        c0, c1 = _at(ea, d), _at(eb, d)
        if c0 is not None and c1 is not None:
            per.append((c1 - c0) / 1000.0)
            sources.add("counter")
            continue
        q0, q1 = _at(pa, d), _at(pb, d)
        if q0 is not None and q1 is not None:
            per.append(q1 - q0)
            sources.add("power_integral")
            continue
        per.append(None)
    total = None if not per or any(e is None for e in per) else math.fsum(per)  # type: ignore[arg-type]
    source = None if not sources else (sources.pop() if len(sources) == 1 else "mixed")
    return {"devices": per, "total_j": total, "seconds": b["t"] - a["t"], "source": source}


def _at(values: Sequence[Any], d: int) -> Any:
    return values[d] if d < len(values) else None


def energy_per_run(summary: Mapping[str, Any], n_runs: int) -> list[float | None]:
    """Joules of each timed run (all devices), from the run_{i}_start/end marks; None where unknown."""
    if not summary.get("available"):
        return [None] * n_runs
    marks = summary.get("marks") or []
    return [energy_between(marks, *run_labels(i))["total_j"] for i in range(n_runs)]


def joules_per_token(energy: Sequence[float | None], tokens_per_run: int) -> list[float | None]:
    """Each run's joules divided by the tokens it generated; None where the energy is unknown."""
    return [None if e is None or tokens_per_run <= 0 else e / tokens_per_run for e in energy]
