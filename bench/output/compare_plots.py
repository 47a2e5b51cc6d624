"""Figures of a comparison: per metric, the ratio NEW/BASE of each cell with its 95% interval,
coloured by that metric's verdict, a line at 1 and the threshold band shaded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bench.analysis.compare import (
    COMPARED_METRICS,
    HIGHER_IS_BETTER,
    IMPROVEMENT,
    INCONCLUSIVE,
    LABELS,
    MEMORY_METRIC,
    NOT_TESTED,
    REGRESSION,
    UNCHANGED,
    Comparison,
)
from bench.errors import UserError
from bench.output.compare import metric_columns, metric_tally
from bench.output.plots import MAX_CELLS, ROW_IN, mpl_text, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VERDICT_COLORS = {
    REGRESSION: "#d62728",
    IMPROVEMENT: "#2ca02c",
    UNCHANGED: "#7f7f7f",
    INCONCLUSIVE: "#c7c7c7",
    NOT_TESTED: "#7f7f7f",
}
FLAGGED_COLOR = "#ff7f0e"  # peak memory (not tested) beyond its threshold
MARKERS = {REGRESSION: "^", IMPROVEMENT: "v", UNCHANGED: "o", INCONCLUSIVE: "D", NOT_TESTED: "s"}


def compare_points(cmp: Comparison, metric: str = "tpot") -> list[dict[str, Any]]:
    """What compare_figure draws, one dict per cell in cell order: name, ratio, interval, verdict, color."""
    if metric not in COMPARED_METRICS:
        raise UserError(f"unknown metric {metric!r}; metrics: {', '.join(COMPARED_METRICS)}")
    out = []
    for c in cmp.cells:
        m = c.metrics.get(metric)
        if m is None or m.ratio is None:
            continue
        flagged = m.verdict == NOT_TESTED and m.beyond_threshold
        out.append(
            {
                "cell_id": c.cell_id,
                "name": c.name,
                "index": c.cell.index,
                "ratio": m.ratio,
                "ci_low": m.ci_low,
                "ci_high": m.ci_high,
                "p_value": m.p_value,
                "verdict": m.verdict,
                "cell_verdict": c.verdict,
                "flagged": flagged,
                "color": FLAGGED_COLOR if flagged else VERDICT_COLORS.get(m.verdict, "#7f7f7f"),
            }
        )
    out.sort(key=lambda p: (p["index"], p["cell_id"]))
    return out


def compare_figure(cmp: Comparison, metric: str = "tpot") -> Figure:
    """The ratio NEW/BASE of one metric per cell with its 95% interval, coloured by the verdict.

    A line at 1, the threshold band shaded; regressions red triangles up, improvements green
    triangles down, unchanged grey circles, inconclusive light grey hollow diamonds: told apart by
    the marker too, not by colour alone. Each verdict is one errorbar artist whose label is the
    verdict (`compare_points` returns the same data). Peak memory has no interval (one value a side).
    """
    points = compare_points(cmp, metric)
    total = len(points)
    if total > MAX_CELLS:  # the most notable ones: cmp.cells is ordered by verdict, then effect size
        rank = {c.cell_id: i for i, c in enumerate(cmp.cells)}
        points = sorted(
            sorted(points, key=lambda p: rank[p["cell_id"]])[:MAX_CELLS], key=lambda p: p["index"]
        )
    fig = new_figure(11.0, 2.3 + ROW_IN * max(len(points), 3))
    label = LABELS.get(metric, metric)
    hw = cmp.new.get("hardware") or ""
    what = "ratio NEW/BASE per cell" + (
        "" if metric == MEMORY_METRIC else f" with {1 - cmp.alpha:.0%} interval"
    )
    title = f"{label}: {what} ({metric_tally(cmp, metric)})\n"
    title += f"{cmp.base['run_id']} -> {cmp.new['run_id']}" + (f" · {hw}" if hw else "")
    if total > len(points):
        title += f" · the {len(points)} most notable of {total} cells"
    ax = fig.add_subplot()
    ax.set_title(mpl_text(title), fontsize=10, loc="left")
    if not points:
        ax.axis("off")
        ax.text(
            0.5, 0.5, mpl_text(f"no cell measured {label} in both runs"), ha="center", transform=ax.transAxes
        )
        return fig
    threshold = cmp.thresholds.get(metric, 0.05)
    ax.axvspan(
        1 / (1 + threshold),
        1 + threshold,
        color="#bbbbbb",
        alpha=0.3,
        lw=0,
        label=f"threshold ±{threshold:.1%}".replace(".0%", "%"),
    )
    ax.axvline(1.0, color="#333333", linewidth=1.0, zorder=1)
    row = {p["cell_id"]: i for i, p in enumerate(points)}
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((p["verdict"], p["flagged"]), []).append(p)
    order = [REGRESSION, IMPROVEMENT, UNCHANGED, INCONCLUSIVE, NOT_TESTED]
    for verdict, flagged in sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else 9, k[1])):
        group = groups[(verdict, flagged)]
        y = np.array([row[p["cell_id"]] for p in group], dtype=float)
        r = np.array([p["ratio"] for p in group])
        lo = np.array([p["ci_low"] if p["ci_low"] is not None else p["ratio"] for p in group])
        hi = np.array([p["ci_high"] if p["ci_high"] is not None else p["ratio"] for p in group])
        color = group[0]["color"]
        name = f"{verdict}, beyond the threshold" if flagged else verdict
        ax.errorbar(
            r,
            y,
            xerr=[r - lo, hi - r],
            fmt=MARKERS.get(verdict, "o"),
            color=color,
            ecolor=color,
            markerfacecolor="white" if verdict == INCONCLUSIVE else color,
            markersize=5,
            elinewidth=1.6,
            capsize=2.5,
            label=name,
            zorder=3,
        )
        if verdict in (REGRESSION, IMPROVEMENT) or flagged:
            for p, yy, h in zip(group, y, hi):
                ax.annotate(
                    f"{p['ratio']:.3f}",
                    (h, yy),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                    color=color,
                )
    ratios = [v for p in points for v in (p["ratio"], p["ci_low"], p["ci_high"]) if v]
    low, high = min(min(ratios), 1 / (1 + threshold)), max(max(ratios), 1 + threshold)
    if high / low > 4:
        ax.set_xscale("log")
    pad = (high - low) * 0.08
    ax.set_xlim(
        low - pad if high / low <= 4 else low / 1.2, high + pad * 2 if high / low <= 4 else high * 1.3
    )
    ax.set_yticks(
        np.arange(len(points)),
        labels=[mpl_text(p["name"]) for p in points],
        fontsize=8 if len(points) <= 120 else 6,
    )
    ax.set_ylim(len(points) - 0.5, -0.5)
    if metric == MEMORY_METRIC:
        reading = "above 1: more memory; one value per run, not tested"
    elif metric in HIGHER_IS_BETTER:
        reading = "below 1: slower"
    else:
        reading = "above 1: slower"
    ax.set_xlabel(f"{label} ratio of medians NEW/BASE ({reading})")
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="best")
    return fig


def compare_figures(cmp: Comparison) -> dict[str, Figure]:
    """One compare_figure per metric measured in at least one compared cell: {"compare_tpot": ...}."""
    return {f"compare_{m}": compare_figure(cmp, m) for m in metric_columns(cmp)}
