"""One metric of one cell across commits: its level, and the commits where the level shifted.

The method, without I/O: the measurements come from bench.results.series (run directories) or
bench.hub.pull (a Hub dataset), `tfbench history` is bench.output.history_command.

Points and commits
------------------
A point is one run's measurement of the cell (its status `ok` in that run): the run id, the
measured commit, the branch, the run's start time, the hardware label (the GPUs, or the CPU:
the `hardware` column of the Hub rows, computed the same way for local runs), and the raw per-run
samples of the metric (CellRecord.samples: one value per timed run; continuous batching: the
median over each run's requests). Its p50 is the median of those samples, or the stored p50 when
there are none (the Hub's "summarized" rows hold statistics only).

Commit order is the order the commits were measured: runs are sorted by their start time
(run.json `started_at`, the Hub column `run_started_at`; then the run id, which starts with the
start time), and a commit sits where its first run sits. Git topology is not available offline,
so a commit measured after its descendants (a bisection, a re-run of an old commit) appears
where it was measured. The runs of one commit are grouped: their samples are pooled, its p50 is
the median of the pool. A run with no measured commit is a commit of its own.

Only one kind of hardware is shown: by default the hardware of the newest run, or the runs whose
hardware label contains `--hardware` (case-insensitive). The others are left out and counted:
a history that mixes GPUs shifts wherever the machine changes.

Change points
-------------
For each commit i after the first, BEFORE pools the samples of the `window` commits before it
(i-window .. i-1, fewer at the start) and AFTER those of i .. i+window-1 (fewer at the end: the
newest commit is judged on its own). The two pools are compared as `tfbench compare` compares two
runs (bench.analysis.compare.compare_metric: ratio of medians AFTER/BEFORE, two-sided Mann-Whitney
U with its Hodges-Lehmann interval); commit i is flagged when the change passes the threshold (default
5%: a ratio above 1.05 or below 1/1.05) AND is significant (p < alpha, default 0.05, the interval
excluding 1). Direction: for latencies higher is slower, for throughputs lower is slower.

A step is seen from the commits next to it too (at i-1 the AFTER window already holds the new
level for the most part), so of adjacent flagged commits with the same direction only the
strongest is kept. Strength: how well the two windows separate, |2U/(m n) - 1| (the rank-biserial
correlation: 1 when every AFTER value lies beyond every BEFORE value), times the difference of
their mean logarithms; both are largest where the windows hold only the old and only the new
level, that is at the commit that made the step. A level that lasts fewer commits than half the window inside the history (a
one-commit blip that is reverted) is not a shift; the newest commit on its own is judged.

When a commit in either window has fewer than 3 samples (summarized Hub rows, a run of 1 or 2
iterations), or the pools are too small for the test ever to reach p < alpha, the p50 rule
applies instead: the ratio of the medians of the commits' p50s, AFTER over BEFORE, flagged when
beyond the threshold; there is no test, and the flag says "p50 rule".

The windows pool runs measured on different days: run-to-run drift that the samples of one run do
not show makes the test overconfident, and alpha is per commit over the whole history; the
threshold is what keeps those small, chance differences out of the flags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from bench.analysis.compare import (
    DEFAULT_THRESHOLD,
    IMPROVEMENT,
    INSUFFICIENT,
    KEY_METRICS,
    MIN_SAMPLES,
    REGRESSION,
    compare_metric,
)
from bench.analysis.ranktest import DEFAULT_ALPHA, rank_test
from bench.errors import UserError
from bench.results.records import HIGHER_IS_BETTER
from bench.results.series import Measurement

DEFAULT_WINDOW = 3
SLOWER = "slower"
FASTER = "faster"


# -------------------------------------------------------------------------------------------- data


@dataclass
class Point:
    """One run's measurement of the cell."""

    run_id: str
    commit: str | None  # the measured commit's sha
    branch: str | None
    started_at: str | None  # ISO 8601, as the run recorded it
    hardware: str
    cell_id: str
    cell_name: str
    metric: str
    samples: list[float]  # raw, one per timed run (empty: statistics only)
    p50: float | None  # the median of the samples, else the stored p50
    n: int  # len(samples), else the stored n
    source: str  # the run directory, or hub:ORG/NAME/<file>


@dataclass
class Commit:
    """The runs of one commit, pooled; `index` is its position in commit order."""

    index: int
    sha: str | None
    label: str  # the short sha, or the run id when the commit is unknown
    branch: str | None
    started_at: str | None  # of its first run
    hardware: str
    run_ids: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)  # each run's p50
    p50: float | None = None
    p10: float | None = None  # of the pooled samples (None with fewer than 3)
    p90: float | None = None
    n: int = 0


@dataclass
class ChangePoint:
    """Commit `index` (of commits(points)) moved the level: AFTER/BEFORE = ratio."""

    index: int
    commit: str | None
    label: str
    direction: str  # "slower" or "faster"
    ratio: float  # median AFTER / median BEFORE (p50 rule: of the commits' p50s)
    ci_low: float | None  # Hodges-Lehmann 95% interval (None for the p50 rule)
    ci_high: float | None
    p_value: float | None
    method: str  # "rank test" or "p50 rule"
    before: list[str] = field(default_factory=list)  # labels of the commits in each window
    after: list[str] = field(default_factory=list)
    n_before: int = 0  # samples (rank test) or commits (p50 rule)
    n_after: int = 0
    strength: float = (
        0.0  # separation x mean log shift of the windows: the strongest of adjacent flags is kept
    )


# ---------------------------------------------------------------------------------------- ordering


def parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text.strip():
        return None
    value = text.strip()
    try:
        if re.fullmatch(r"\d{8}T\d{6}Z", value):
            stamp = datetime.strptime(value, "%Y%m%dT%H%M%SZ")
        else:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def order_key(p: Point) -> tuple[float, str]:
    """Start time, else the time at the head of the run id (runs are named <UTC stamp>-<name>), else first."""
    t = parse_time(p.started_at)
    if t is None:
        head = re.match(r"\d{8}T\d{6}Z", p.run_id)
        t = parse_time(head.group(0)) if head else None
    return (-math.inf if t is None else t, p.run_id)


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def commits(points: Iterable[Point]) -> list[Commit]:
    """The points grouped by commit, in the order the commits were first measured."""
    groups: dict[str, Commit] = {}
    for p in sorted(points, key=order_key):
        key = p.commit or f"run:{p.run_id}"
        g = groups.get(key)
        if g is None:
            label = p.commit[:12] if p.commit else p.run_id
            g = groups[key] = Commit(len(groups), p.commit, label, p.branch, p.started_at, p.hardware)
        g.run_ids.append(p.run_id)
        g.samples.extend(p.samples)
        if p.p50 is not None:
            g.p50s.append(p.p50)
        g.n += p.n
        g.branch = g.branch or p.branch
    out = list(groups.values())
    for g in out:
        g.p50 = _median(g.samples) if g.samples else _median(g.p50s)
        if len(g.samples) >= MIN_SAMPLES:
            g.p10, g.p90 = (float(v) for v in np.percentile(g.samples, [10, 90]))
    return out


# ------------------------------------------------------------------------------------ change points


def _direction(metric: str, ratio: float) -> str:
    up = ratio > 1
    return SLOWER if up != (metric in HIGHER_IS_BETTER) else FASTER


def _strength(base: list[float], new: list[float]) -> float:
    """|2U/(mn) - 1| (how well the two windows separate) times |mean log AFTER - mean log BEFORE|."""
    test = rank_test(base, new)
    separation = abs(2.0 * test.u / (len(base) * len(new)) - 1.0)
    return separation * abs(float(np.mean(np.log(new)) - np.mean(np.log(base))))


def _judge(
    metric: str, before: list[Commit], after: list[Commit], threshold: float, alpha: float
) -> ChangePoint | None:
    first = after[0]
    common = {
        "index": first.index,
        "commit": first.sha,
        "label": first.label,
        "before": [g.label for g in before],
        "after": [g.label for g in after],
    }
    if all(len(g.samples) >= MIN_SAMPLES for g in (*before, *after)):
        b = [s for g in before for s in g.samples]
        a = [s for g in after for s in g.samples]
        m = compare_metric(metric, b, a, threshold, alpha)
        if m.verdict != INSUFFICIENT:
            if m.verdict not in (REGRESSION, IMPROVEMENT) or m.ratio is None:
                return None
            return ChangePoint(
                **common,
                direction=SLOWER if m.verdict == REGRESSION else FASTER,
                ratio=m.ratio,
                ci_low=m.ci_low,
                ci_high=m.ci_high,
                p_value=m.p_value,
                method="rank test",
                n_before=len(b),
                n_after=len(a),
                strength=_strength(b, a),
            )
    # The p50 rule: too few samples for the test.
    b50 = [g.p50 for g in before if g.p50]
    a50 = [g.p50 for g in after if g.p50]
    if not b50 or not a50:
        return None
    ratio = float(np.median(a50) / np.median(b50))
    if not abs(math.log(ratio)) > math.log1p(threshold):
        return None
    return ChangePoint(
        **common,
        direction=_direction(metric, ratio),
        ratio=ratio,
        ci_low=None,
        ci_high=None,
        p_value=None,
        method="p50 rule",
        n_before=len(b50),
        n_after=len(a50),
        strength=_strength(b50, a50),
    )


def check_params(threshold: Any, alpha: Any, window: Any) -> None:
    """UserError (exit 2) for a threshold, alpha or window that is not one."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise UserError(f"threshold must be a fraction >= 0 (0.05 for 5%), not {threshold!r}")
    if not math.isfinite(threshold):
        raise UserError(f"threshold must be finite, not {threshold!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1 (0.05 for 95% intervals), not {alpha!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise UserError(f"window must be a whole number of commits >= 1, not {window!r}")


def change_points(
    points: Sequence[Point],
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    window: int = DEFAULT_WINDOW,
) -> list[ChangePoint]:
    """The commits where the level shifted (see the module docstring), in commit order."""
    check_params(threshold, alpha, window)
    metrics = {p.metric for p in points}
    if len(metrics) > 1:
        raise ValueError(f"points of several metrics: {sorted(metrics)}")
    if not points:
        return []
    metric = next(iter(metrics))
    groups = commits(points)
    flags = []
    for i in range(1, len(groups)):
        cp = _judge(metric, groups[max(0, i - window) : i], groups[i : i + window], threshold, alpha)
        if cp is not None:
            flags.append(cp)
    kept: list[ChangePoint] = []
    run: list[ChangePoint] = []
    for cp in [*flags, None]:
        if run and (cp is None or cp.index != run[-1].index + 1 or cp.direction != run[-1].direction):
            kept.append(max(run, key=lambda c: (c.strength, abs(math.log(c.ratio)))))
            run = []
        if cp is not None:
            run.append(cp)
    return kept


# ----------------------------------------------------------------------------------------- points


def check_metric(metric: str) -> str:
    """The metric, or UserError naming the ones a history can follow."""
    if metric not in KEY_METRICS:
        raise UserError(f"metric {metric!r}: allowed: {', '.join(KEY_METRICS)}")
    return metric


def _p50(samples_: list[float], stored: Any) -> float | None:
    if samples_:
        return float(np.median(samples_))
    if (
        isinstance(stored, (int, float))
        and not isinstance(stored, bool)
        and math.isfinite(stored)
        and stored > 0
    ):
        return float(stored)
    return None


def _status_note(statuses: dict[str, int], cell: str) -> list[str]:
    if not statuses:
        return []
    text = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    total = sum(statuses.values())
    return [
        f"{total} run{'s' if total != 1 else ''} without an ok measurement of cell {cell} left out ({text})"
    ]


def to_points(measurements: Iterable[Measurement], metric: str) -> tuple[list[Point], list[str]]:
    """One point per measurement whose record is ok and holds `metric`, in commit order, and a note
    that counts the others by status (`no <metric>`: ok, but without the metric)."""
    check_metric(metric)
    points: list[Point] = []
    statuses: dict[str, int] = {}
    cell_id = ""
    for m in measurements:
        record = m.record
        cell_id = record.cell_id
        if record.status != "ok":
            statuses[record.status] = statuses.get(record.status, 0) + 1
            continue
        values = record.samples(metric)
        p50 = _p50(values, record.stat(metric, "p50"))
        if p50 is None:
            statuses[f"no {metric}"] = statuses.get(f"no {metric}", 0) + 1
            continue
        points.append(
            Point(
                run_id=m.run_id,
                commit=m.commit,
                branch=m.branch,
                started_at=m.started_at,
                hardware=m.hardware,
                cell_id=record.cell_id,
                cell_name=record.name,
                metric=metric,
                samples=values,
                p50=p50,
                n=len(values) if values else int(record.stat(metric, "n") or 0),
                source=m.source,
            )
        )
    points.sort(key=order_key)
    return points, _status_note(statuses, cell_id)


# -------------------------------------------------------------------------------------- hardware


def select_hardware(
    points: Sequence[Point], hardware: str | None = None
) -> tuple[list[Point], dict[str, int]]:
    """(the points on one kind of hardware, how many runs were left out per hardware label).

    hardware: a case-insensitive substring of the label; None: the hardware of the newest point.
    """
    if not points:
        return [], {}
    if hardware is None or not hardware.strip():
        chosen = max(points, key=order_key).hardware

        def keep(p: Point) -> bool:
            return p.hardware == chosen
    else:
        needle = hardware.strip().lower()

        def keep(p: Point) -> bool:
            return needle in p.hardware.lower()

    kept = [p for p in points if keep(p)]
    excluded: dict[str, int] = {}
    for p in points:
        if not keep(p):
            excluded[p.hardware] = excluded.get(p.hardware, 0) + 1
    if not kept:
        labels = ", ".join(f"{label} ({n} runs)" for label, n in sorted(excluded.items()))
        raise UserError(f"no run on hardware matching {hardware!r}; the runs' hardware: {labels}")
    return kept, excluded
