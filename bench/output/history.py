"""`tfbench history` as people and programs read it: a text table (the terminal), a Markdown table
(a pull-request comment), JSON, and a PNG of the level across commits with the change points.

One row per commit, in the order the commits were measured (bench.analysis.levels); the text and
the Markdown table are the same rows through one renderer (bench.output.tables.table_lines).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.analysis.compare import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from bench.analysis.levels import (
    DEFAULT_WINDOW,
    SLOWER,
    ChangePoint,
    Commit,
    Point,
    commits,
    parse_time,
    settings_changes,
)
from bench.errors import UserError
from bench.output.tables import table_lines
from bench.results.records import HIGHER_IS_BETTER, UNITS
from bench.results.store import finite

EXIT_CODE = 0  # history is informational
ORDER = "measurement order (run start time), not git order"


def _fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if UNITS.get(metric) == "s":
        if value >= 1:
            return f"{value:.3f} s"
        if value >= 1e-3:
            return f"{value * 1e3:.3f} ms"
        return f"{value * 1e6:.1f} µs"
    return f"{value:,.1f} tok/s"


def _fmt_date(text: str | None) -> str:
    t = parse_time(text)
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _describe(cp: ChangePoint) -> str:
    text = f"{cp.direction} x{cp.ratio:.3f}"
    if cp.ci_low is not None and cp.ci_high is not None:
        text += f" [{cp.ci_low:.3f}, {cp.ci_high:.3f}]"
    if cp.p_value is not None:
        text += f" p={cp.p_value:.2g}" if cp.p_value >= 1e-12 else " p<1e-12"
    if cp.q_value is not None:  # adjusted for testing every commit
        text += f" q={cp.q_value:.2g}" if cp.q_value >= 1e-12 else " q<1e-12"
    return text + (" (p50 rule)" if cp.method == "p50 rule" else "")


def _rows(groups: list[Commit], cps: Sequence[ChangePoint], metric: str) -> list[dict[str, str]]:
    flagged = {cp.index: cp for cp in cps}
    changed = {s.index: s for s in settings_changes(groups)}
    rows = []
    for g in groups:
        prev = groups[g.index - 1].p50 if g.index > 0 else None
        ratio = f"{g.p50 / prev:.3f}" if prev and g.p50 and g.index not in changed else "-"
        cp = flagged.get(g.index)
        note = (
            f"settings changed: {changed[g.index].after} (was {changed[g.index].before})"
            if g.index in changed
            else ""
        )
        rows.append(
            {
                "commit": g.label,
                "branch": g.branch or "-",
                "measured": _fmt_date(g.started_at),
                "runs": str(len(g.run_ids)),
                "n": str(g.n),
                "p50": _fmt_value(metric, g.p50),
                "vs prev": ratio,
                "change": _describe(cp) if cp else note,
            }
        )
    return rows


def _header(
    points: Sequence[Point], groups: list[Commit], excluded: dict[str, int] | None, hardware: str | None
) -> list[str]:
    p = points[-1] if points else None
    metric = p.metric if p else "?"
    lines = [f"{metric} of cell {p.cell_id} ({p.cell_name})" if p else f"{metric}: no runs"]
    labels = sorted({q.hardware for q in points})
    how = f"matching {hardware!r}" if hardware else "the newest run's"
    if labels:
        lines.append(f"hardware ({how}): {', '.join(labels)}")
    if excluded:
        total = sum(excluded.values())
        listed = ", ".join(f"{label} ({n})" for label, n in sorted(excluded.items()))
        lines.append(
            f"left out: {total} run{'s' if total != 1 else ''} on other hardware: {listed}; see --hardware"
        )
    runs = len(points)
    lines.append(
        f"{len(groups)} commit{'s' if len(groups) != 1 else ''}, {runs} run{'s' if runs != 1 else ''}, in {ORDER}"
    )
    return lines


def _footer(cps: Sequence[ChangePoint], threshold: float | None, window: int | None) -> list[str]:
    rule = []
    if threshold is not None:
        rule.append(f"threshold {threshold:.1%}".replace(".0%", "%"))
    if window is not None:
        rule.append(f"window {window}")
    suffix = f" ({', '.join(rule)})" if rule else ""
    if not cps:
        return [f"no level shift{suffix}"]
    lines = [f"{len(cps)} level shift{'s' if len(cps) != 1 else ''}{suffix}:"]
    for cp in cps:
        lines.append(f"  {cp.label}  {_describe(cp)}  ({', '.join(cp.before)} -> {', '.join(cp.after)})")
    return lines


# The columns of the history table, in text and in markdown.
TABLE_COLUMNS = ("commit", "branch", "measured", "runs", "n", "p50", "vs prev", "change")
RIGHT = {i for i, c in enumerate(TABLE_COLUMNS) if c in ("runs", "n", "p50", "vs prev")}


def render(
    points: Sequence[Point],
    cps: Sequence[ChangePoint],
    *,
    markdown: bool = False,
    excluded: dict[str, int] | None = None,
    hardware: str | None = None,
    notes: Sequence[str] = (),
    threshold: float | None = None,
    window: int | None = None,
) -> str:
    """One row per commit in commit order, the change points below it: plain text, or Markdown for
    a pull-request comment (a heading, and red or green marks on the shifts)."""
    groups = commits(points)
    metric = points[0].metric if points else "?"
    head = _header(points, groups, excluded, hardware)
    rows = []
    for r in _rows(groups, cps, metric):
        if markdown:
            mark = ("🔴 " if r["change"].startswith(SLOWER) else "🟢 ") if r["change"] else ""
            r = {**r, "commit": f"`{r['commit']}`", "change": f"{mark}{r['change']}".strip()}
        rows.append([r[c] for c in TABLE_COLUMNS])
    if markdown:
        out = [f"### tfbench history: {head[0]}", ""]
        out += [f"{h}  " for h in head[1:]] + [f"note: {n}  " for n in notes] + [""]
    else:
        out = [*head, *(f"note: {n}" for n in notes), ""]
    out += table_lines(TABLE_COLUMNS, rows, RIGHT, markdown=markdown)
    out += ["", *_footer(cps, threshold, window)]
    return "\n".join(out) + "\n"


def to_json(
    points: Sequence[Point],
    cps: Sequence[ChangePoint],
    *,
    excluded: dict[str, int] | None = None,
    hardware: str | None = None,
    notes: Sequence[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    window: int = DEFAULT_WINDOW,
) -> dict[str, Any]:
    """Everything, JSON-serializable (non-finite numbers as null)."""
    groups = commits(points)
    metric = points[0].metric if points else None
    flagged = {cp.index: cp for cp in cps}
    commit_rows = []
    for g in groups:
        prev = groups[g.index - 1].p50 if g.index > 0 else None
        row = {k: v for k, v in asdict(g).items() if k != "samples"}
        row["ratio_to_previous"] = g.p50 / prev if prev and g.p50 else None
        row["change_point"] = asdict(flagged[g.index]) if g.index in flagged else None
        commit_rows.append(row)
    data = {
        "metric": metric,
        "unit": UNITS.get(metric or "", ""),
        "better": "higher" if metric in HIGHER_IS_BETTER else "lower",
        "cell_id": points[0].cell_id if points else None,
        "cell_name": points[0].cell_name if points else None,
        "hardware": sorted({p.hardware for p in points}),
        "hardware_filter": hardware,
        "excluded": dict(excluded or {}),
        "order": ORDER,
        "threshold": threshold,
        "alpha": alpha,
        "window": window,
        "notes": list(notes),
        "commits": commit_rows,
        "change_points": [asdict(cp) for cp in cps],
        "runs": [asdict(p) for p in points],
        "exit_code": EXIT_CODE,
    }
    return finite(data)


def plot(
    points: Sequence[Point], cps: Sequence[ChangePoint], metric: str, path: str | os.PathLike[str]
) -> Path:
    """A PNG: the p50 of each commit with its p10-p90 band, commits in order, change points marked."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plotting needs matplotlib (pip install matplotlib), or leave out --plot") from None
    out = Path(path)
    if not out.parent.is_dir():
        raise UserError(f"cannot write the plot to {out}: {out.parent} is not a directory")
    groups = commits(points)
    seconds = UNITS.get(metric) == "s"
    scale, unit = (1e3, "ms") if seconds else (1.0, UNITS.get(metric, ""))
    x = np.arange(len(groups))

    def scaled(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v * scale for v in values], dtype=np.float64)

    fig = Figure(figsize=(max(6.0, min(0.45 * len(groups) + 3, 24.0)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    p50 = scaled([g.p50 for g in groups])
    lo, hi = scaled([g.p10 for g in groups]), scaled([g.p90 for g in groups])
    if np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, alpha=0.25, color="tab:blue", linewidth=0, label="p10-p90")
    ax.plot(x, p50, marker="o", color="tab:blue", linewidth=1.5, markersize=4, label="p50")
    for cp in cps:
        color = "tab:red" if cp.direction == SLOWER else "tab:green"
        ax.axvline(cp.index - 0.5, color=color, linestyle="--", linewidth=1.2)
        ax.annotate(
            f"{cp.direction} x{cp.ratio:.3f}",
            xy=(cp.index - 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            color=color,
            fontsize=8,
        )
    step = max(1, math.ceil(len(groups) / 40))
    ax.set_xticks(x[::step], [g.short for g in groups][::step], rotation=60, ha="right", fontsize=7)
    for s in settings_changes(groups):  # runs measured otherwise: marked, never compared across
        ax.axvline(s.index - 0.5, color="#888888", linestyle=":", linewidth=1.0)
    ax.set_xlim(-0.6, max(len(groups) - 0.4, 0.6))
    ax.set_xlabel("commit, in the order measured (run start time)")
    better = "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"
    ax.set_ylabel(f"{metric} ({unit}, {better})")
    name = f"{points[0].cell_name} ({points[0].cell_id[:8]})" if points else ""
    hardware = ", ".join(sorted({p.hardware for p in points}))
    ax.set_title(f"{metric}: {name}\n{hardware}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    try:
        fig.savefig(out, format="png", dpi=120)
    except OSError as exc:
        raise UserError(f"cannot write the plot to {out}: {exc}") from None
    return out
