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
For each commit i after the first, BEFORE holds the runs of the `window` commits before it
(i-window .. i-1, fewer at the start) and AFTER those of i .. i+window-1 (fewer at the end: the
newest commit is judged on its own). The unit is the run, as the noise model of `tfbench compare`
says (bench.analysis.noise): each run's level is the mean log of its worker processes' medians.
The spread of one run's level is taken from the whole history (series_var: the successive
differences of the run levels, robustly), since the runs were made at different times and their
spread holds the machine's drift: the flags do not fire on it. The two windows' mean levels are
compared with a t test on that spread. Under MIN_SERIES runs, the windows' own run levels go
through compare's Welch test instead (a window of a single run taking the spread of one run from
the calibration of the hardware, `tfbench calibrate`, else the assumed drift).

Commit i is flagged when the change passes the threshold (default 5%: a ratio above 1.05 or below
1/1.05) AND is significant. A history tests every commit, so the p-values of all tested commits
are adjusted together (Benjamini-Hochberg, scipy.stats.false_discovery_control) and a commit is
significant when its adjusted p, q, is below alpha (default 0.05). Tested one by one at alpha,
43% of simulated 20-commit histories of identical code showed a flag somewhere; adjusted, 1-2%
(tests/analysis/test_levels.py, with the power that is left).
Direction: for latencies higher is slower, for throughputs lower is slower.

Runs measured with other settings (warm-up, timed runs, processes) are not comparable: the windows
never reach across a change of settings, and the commit where they changed is marked, not flagged.

A step is seen from the commits next to it too (at i-1 the AFTER window already holds the new
level for the most part), so of adjacent flagged commits with the same direction only the
strongest is kept (the largest |t|: the shift over its standard error, largest where the windows
hold only the old and only the new level, that is at the commit that made the step).

When a commit in either window has no raw samples (summarized Hub rows), the p50 rule applies
instead: the ratio of the medians of the commits' p50s, AFTER over BEFORE, flagged when beyond the
threshold; there is no test, and the flag says "p50 rule".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy.stats import false_discovery_control

from bench.analysis.compare import DEFAULT_ALPHA, DEFAULT_THRESHOLD, KEY_METRICS, check_alpha
from bench.analysis.noise import CannotEstimate, Drift, Side, assumed_drift, estimate, t_estimate
from bench.errors import UserError
from bench.results.records import HIGHER_IS_BETTER
from bench.results.series import Measurement

# Runs a history needs before its own run spread is used (fewer: each window's spread).
MIN_SERIES = 8
# The Gaussian efficiency of the median absolute deviation (Rousseeuw and Croux, 1993).
MAD_EFFICIENCY = 0.3675

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
    level: float | None = None  # mean log of the run's process medians (None: statistics only)
    level_var: float | None = None  # its variance within the run (s^2 / P; None with one process)
    settings: str = ""  # what the run measured with (warm-up, timed runs, processes)


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
    levels: list[float] = field(default_factory=list)  # each run's level (the unit of the test)
    level_vars: list[float] = field(default_factory=list)
    settings: str = ""
    complete: bool = True  # every run has raw samples

    @property
    def short(self) -> str:
        """A label for a plot's axis: 7 characters of the sha, else when the run was measured."""
        return self.sha[:7] if self.sha else self.label


@dataclass
class ChangePoint:
    """Commit `index` (of commits(points)) moved the level: AFTER/BEFORE = ratio."""

    index: int
    commit: str | None
    label: str
    direction: str  # "slower" or "faster"
    ratio: float  # median AFTER / median BEFORE (p50 rule: of the commits' p50s)
    ci_low: float | None  # interval of the ratio (None for the p50 rule)
    ci_high: float | None
    p_value: float | None
    method: str  # "t on runs, the history's run spread", "welch on runs" or "p50 rule"
    # p adjusted for testing every commit of the history (Benjamini-Hochberg; None for the p50 rule)
    q_value: float | None = None
    before: list[str] = field(default_factory=list)  # labels of the commits in each window
    after: list[str] = field(default_factory=list)
    n_before: int = 0  # runs (test) or commits (p50 rule)
    n_after: int = 0
    strength: float = (
        0.0  # |t| (test) or separation x |log ratio| (p50 rule): the strongest adjacent flag is kept
    )


@dataclass
class SettingsChange:
    """Commit `index` was measured with other settings than the one before it: never compared across."""

    index: int
    label: str
    before: str
    after: str


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


def _run_label(p: Point) -> str:
    """A run without a measured commit, named by when it ran (and its name), not a cut run id."""
    t = parse_time(p.started_at)
    head = re.match(r"(\d{8}T\d{6}Z)-?(.*)", p.run_id)
    if t is None and head:
        t = parse_time(head.group(1))
    name = head.group(2) if head else p.run_id
    when = datetime.fromtimestamp(t, timezone.utc).strftime("%m-%d %H:%M") if t is not None else ""
    return f"{when} {name}".strip() or p.run_id


def commits(points: Iterable[Point]) -> list[Commit]:
    """The points grouped by commit (and settings), in the order the commits were first measured."""
    groups: dict[tuple[str, str], Commit] = {}
    for p in sorted(points, key=order_key):
        key = (p.commit or f"run:{p.run_id}", p.settings)
        g = groups.get(key)
        if g is None:
            label = p.commit[:12] if p.commit else _run_label(p)
            g = Commit(len(groups), p.commit, label, p.branch, p.started_at, p.hardware, settings=p.settings)
            groups[key] = g
        g.run_ids.append(p.run_id)
        g.samples.extend(p.samples)
        if p.p50 is not None:
            g.p50s.append(p.p50)
        if p.level is not None:
            g.levels.append(p.level)
            if p.level_var is not None:
                g.level_vars.append(p.level_var)
        else:
            g.complete = False
        g.n += p.n
        g.branch = g.branch or p.branch
    out = list(groups.values())
    for g in out:
        g.p50 = _median(g.samples) if g.samples else _median(g.p50s)
        if len(g.samples) >= 3:
            g.p10, g.p90 = (float(v) for v in np.percentile(g.samples, [10, 90]))
    return out


# ------------------------------------------------------------------------------------ change points


def _direction(metric: str, ratio: float) -> str:
    up = ratio > 1
    return SLOWER if up != (metric in HIGHER_IS_BETTER) else FASTER


def _one_run_var(groups: Sequence[Commit], drift: Drift) -> float:
    """The variance of one run's level where a window has a single run: the drift between runs,
    plus the noise of a level inside its run (the median over the history's runs)."""
    within = [v for g in groups for v in g.level_vars]
    return drift.var + (float(np.median(within)) if within else (drift.process_var or 0.0))


def _judge(
    metric: str,
    before: list[Commit],
    after: list[Commit],
    threshold: float,
    alpha: float,
    drift: Drift,
    history: Sequence[Commit],
    series: tuple[float, float] | None = None,
) -> ChangePoint | None:
    first = after[0]
    common = {
        "index": first.index,
        "commit": first.sha,
        "label": first.label,
        "before": [g.label for g in before],
        "after": [g.label for g in after],
    }
    if all(g.complete and g.levels for g in (*before, *after)):
        b = [x for g in before for x in g.levels]
        a = [x for g in after for x in g.levels]
        if series is not None:
            se = math.sqrt(series[0] * (1 / len(a) + 1 / len(b)))
            est = t_estimate(float(np.mean(a) - np.mean(b)), se, series[1], alpha)
            method = "t on runs, the history's run spread"
        else:
            prior = Drift(0.0, 0.0, math.inf, drift.source, _one_run_var(history, drift), drift.df)
            try:
                est = estimate(Side(tuple(b), len(b)), Side(tuple(a), len(a)), prior, alpha)
            except CannotEstimate:
                return None
            method = "welch on runs"
        # Every tested commit is returned: its p joins the history's family (change_points).
        return ChangePoint(
            **common,
            direction=_direction(metric, est.ratio),
            ratio=est.ratio,
            ci_low=est.ci_low,
            ci_high=est.ci_high,
            p_value=est.p_value,
            method=method,
            n_before=len(b),
            n_after=len(a),
            strength=abs(est.log_ratio) / est.se if est.se > 0 else math.inf,
        )
    # The p50 rule: statistics only.
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
        strength=_separation(b50, a50) * abs(float(np.mean(np.log(a50)) - np.mean(np.log(b50)))),
    )


def series_var(groups: Sequence[Commit]) -> tuple[float, float] | None:
    """The variance of one run's level, from the whole history, and its degrees of freedom; None
    under MIN_SERIES runs (the windows' own spread is used then).

    From the successive differences of the run levels in commit order: a difference of two runs
    holds twice a run's variance (the machine's drift and the run's own noise alike), and a step
    moves one difference only, so their median absolute value barely moves with it (robust scale:
    sigma = median|d| / (0.6745 sqrt 2)). The mean square (von Neumann's) would be more efficient
    but is not robust: two steps in a history of 9 runs inflated it tenfold and hid both. The
    median's Gaussian efficiency is 37%, so it counts as 0.37 (n - 1) degrees of freedom: 7 in a
    history of 20 runs, where three runs per window give Welch's test about 4."""
    levels = [x for g in groups if g.complete for x in g.levels]
    n = len(levels)
    if n < MIN_SERIES:
        return None
    sigma = float(np.median(np.abs(np.diff(levels)))) / (0.6744897501960817 * math.sqrt(2))
    if not sigma > 0:
        return None
    return sigma**2, MAD_EFFICIENCY * (n - 1)


def adjust_for_all_commits(tested: list[ChangePoint], threshold: float, alpha: float) -> list[ChangePoint]:
    """The tested commits that shift beyond the threshold with a Benjamini-Hochberg q below alpha
    (the p50 rule's flags, which have no test, pass through)."""
    ps = [cp.p_value for cp in tested if cp.p_value is not None]
    qs = iter(false_discovery_control(ps, method="bh").tolist() if ps else [])
    out = []
    for cp in tested:
        if cp.p_value is None:
            out.append(cp)
            continue
        cp.q_value = next(qs)
        if cp.q_value < alpha and abs(math.log(cp.ratio)) > math.log1p(threshold):
            out.append(cp)
    return out


def _separation(before: Sequence[float], after: Sequence[float]) -> float:
    """How well two windows separate, |2U/(mn) - 1| (1 when every AFTER value lies beyond every
    BEFORE value): largest at the commit that made a step, so that its neighbours yield to it."""
    above = sum((a > b) + 0.5 * (a == b) for a in after for b in before)
    return abs(2.0 * above / (len(before) * len(after)) - 1.0)


def settings_changes(groups: Sequence[Commit]) -> list[SettingsChange]:
    """Where the measurement settings changed from one commit to the next."""
    return [
        SettingsChange(g.index, g.label, groups[g.index - 1].settings, g.settings)
        for g in groups[1:]
        if g.settings != groups[g.index - 1].settings
    ]


def check_params(threshold: Any, alpha: Any, window: Any) -> None:
    """UserError (exit 2) for a threshold, alpha or window that is not one."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise UserError(f"threshold must be a fraction >= 0 (0.05 for 5%), not {threshold!r}")
    if not math.isfinite(threshold):
        raise UserError(f"threshold must be finite, not {threshold!r}")
    check_alpha(alpha)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise UserError(f"window must be a whole number of commits >= 1, not {window!r}")


def change_points(
    points: Sequence[Point],
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    window: int = DEFAULT_WINDOW,
    drift: Drift | None = None,
) -> list[ChangePoint]:
    """The commits where the level shifted (see the module docstring), in commit order.

    drift: the hardware's calibrated drift for this metric; None: the assumed one."""
    check_params(threshold, alpha, window)
    metrics = {p.metric for p in points}
    if len(metrics) > 1:
        raise ValueError(f"points of several metrics: {sorted(metrics)}")
    if not points:
        return []
    metric = next(iter(metrics))
    groups = commits(points)
    drift = drift or assumed_drift(points[-1].hardware)
    series = series_var(groups)
    flags = []
    for i in range(1, len(groups)):
        before_settings, after_settings = groups[i - 1].settings, groups[i].settings
        if before_settings != after_settings:
            continue  # never across a change of settings (settings_changes marks it)
        before = [g for g in groups[max(0, i - window) : i] if g.settings == before_settings]
        after = []
        for g in groups[i : i + window]:
            if g.settings != after_settings:
                break
            after.append(g)
        while before and before[0].settings != before_settings:
            before.pop(0)
        cp = _judge(metric, before, after, threshold, alpha, drift, groups, series)
        if cp is not None:
            flags.append(cp)
    flags = adjust_for_all_commits(flags, threshold, alpha)
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
        logs = [math.log(v) for v in record.process_medians(metric) if v > 0]
        level = math.fsum(logs) / len(logs) if logs else None
        level_var = float(np.var(logs, ddof=1)) / len(logs) if len(logs) > 1 else None
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
                level=level,
                level_var=level_var,
                settings=settings_text(record.settings or {}),
            )
        )
    points.sort(key=order_key)
    return points, _status_note(statuses, cell_id)


# -------------------------------------------------------------------------------------- hardware


def settings_text(settings: dict[str, Any]) -> str:
    """What a run measured with, in words: runs measured otherwise are not compared."""
    keys = (
        ("warmup_iterations", "warm-up"),
        ("measurement_iterations", "timed runs"),
        ("processes", "processes"),
    )
    return ", ".join(f"{word} {settings[k]}" for k, word in keys if settings.get(k) is not None)


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
