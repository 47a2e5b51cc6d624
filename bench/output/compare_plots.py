"""Figures of a comparison: per metric, the ratio NEW/BASE of each cell with its 95% interval,
coloured by that metric's verdict, a line at 1 and the threshold band shaded; and per compared
cell (the most notable, capped), the samples of BASE and NEW side by side, grouped by worker
process, as compare judges them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bench.analysis import compare
from bench.analysis.compare import CellComparison, Comparison
from bench.errors import UserError
from bench.output.compare import fmt_p, metric_columns, metric_tally
from bench.output.plots import LABEL_PT, MAX_CELLS, ROW_IN, WIDTH_IN, mpl_text, new_figure
from bench.results.records import CellRecord
from bench.results.store import Run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VERDICT_COLORS = {
    compare.REGRESSION: "#d62728",
    compare.IMPROVEMENT: "#2ca02c",
    compare.UNCHANGED: "#7f7f7f",
    compare.INCONCLUSIVE: "#c7c7c7",
    compare.NOT_TESTED: "#7f7f7f",
}
FLAGGED_COLOR = "#ff7f0e"  # peak memory (not tested) beyond its threshold
MARKERS = {
    compare.REGRESSION: "^",
    compare.IMPROVEMENT: "v",
    compare.UNCHANGED: "o",
    compare.INCONCLUSIVE: "D",
    compare.NOT_TESTED: "s",
}


def compare_points(cmp: Comparison, metric: str = "tpot") -> list[dict[str, Any]]:
    """What compare_figure draws, one dict per cell in cell order: name, ratio, interval, verdict, color."""
    if metric not in compare.COMPARED_METRICS:
        raise UserError(f"unknown metric {metric!r}; metrics: {', '.join(compare.COMPARED_METRICS)}")
    out = []
    for c in cmp.cells:
        m = c.metrics.get(metric)
        if m is None or m.ratio is None:
            continue
        flagged = m.verdict == compare.NOT_TESTED and m.beyond_threshold
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
    fig = new_figure(WIDTH_IN, 2.3 + ROW_IN * max(len(points), 3))
    label = compare.LABELS.get(metric, metric)
    hw = cmp.new.get("hardware") or ""
    what = "ratio NEW/BASE per cell" + (
        "" if metric == compare.MEMORY_METRIC else f" with {1 - cmp.alpha:.0%} interval"
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
    order = [
        compare.REGRESSION,
        compare.IMPROVEMENT,
        compare.UNCHANGED,
        compare.INCONCLUSIVE,
        compare.NOT_TESTED,
    ]
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
            markerfacecolor="white" if verdict == compare.INCONCLUSIVE else color,
            markersize=5,
            elinewidth=1.6,
            capsize=2.5,
            label=name,
            zorder=3,
        )
        if verdict in (compare.REGRESSION, compare.IMPROVEMENT) or flagged:
            for p, yy, h in zip(group, y, hi):
                ax.annotate(
                    f"{p['ratio']:.3f}",
                    (h, yy),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=8,
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
        fontsize=LABEL_PT if len(points) <= 120 else 6,
    )
    ax.set_ylim(len(points) - 0.5, -0.5)
    if metric == compare.MEMORY_METRIC:
        reading = "above 1: more memory; one value per run, not tested"
    elif metric in compare.HIGHER_IS_BETTER:
        reading = "below 1: slower"
    else:
        reading = "above 1: slower"
    ax.set_xlabel(f"{label} ratio of medians NEW/BASE ({reading})")
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    ax.legend(fontsize=LABEL_PT, loc="best")
    return fig


def compare_figures(cmp: Comparison) -> dict[str, Figure]:
    """One compare_figure per metric measured in at least one compared cell: {"compare_tpot": ...}."""
    return {f"compare_{m}": compare_figure(cmp, m) for m in metric_columns(cmp)}


# ------------------------------------------------------------------------------ distributions

MAX_DISTRIBUTIONS = 30  # cells with a distribution figure: the most notable first (cmp.cells' order)
DISTRIBUTION_METRICS = ("e2e_latency", "ttft", "tpot")
SIDE_COLORS = {"BASE": "#1f77b4", "NEW": "#ff7f0e"}


def distribution_name(cell_id: str) -> str:
    """The figure (and PNG file) name of a cell's distribution figure."""
    return f"dist_{cell_id}"


def distribution_cells(cmp: Comparison) -> list[CellComparison]:
    """The cells that get a distribution figure: the first MAX_DISTRIBUTIONS of cmp.cells, which
    lists regressions, improvements, inconclusive, unchanged, each by effect size."""
    return cmp.cells[:MAX_DISTRIBUTIONS]


def distribution_figure(c: CellComparison, base: CellRecord, new: CellRecord) -> Figure:
    """One compared cell's samples, BASE beside NEW: a panel per latency metric, a row per worker
    process with its timed runs as dots and its median as a bar, and each side's value (the
    geometric mean of its process medians, what the ratio compares) as a dashed line."""
    metrics = [m for m in DISTRIBUTION_METRICS if m in c.metrics]
    groups = {m: {"BASE": base.process_samples(m), "NEW": new.process_samples(m)} for m in metrics}
    rows = max((len(g["BASE"]) + len(g["NEW"]) for g in groups.values()), default=2)
    fig = new_figure(WIDTH_IN, 1.8 + 0.24 * max(rows + 1, 4))
    fig.suptitle(
        mpl_text(
            f"{c.name} ({c.cell_id[:8]}): {c.verdict} · samples per worker process, BASE and NEW\n"
            "dots: timed runs; black bar: the process's median; dashed: the side's value "
            "(geometric mean of its process medians, what the ratio compares)"
        ),
        fontsize=10,
        x=0.01,
        ha="left",
    )
    if not metrics:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no latency measured on both sides", ha="center", transform=ax.transAxes)
        return fig
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)  # the jitter only spreads dots apart; the same on every draw
    for ax, metric in zip(axes, metrics):
        m = c.metrics[metric]
        y = 0
        ticks: list[tuple[float, str]] = []
        for label, value in (("BASE", m.base_value), ("NEW", m.new_value)):
            color = SIDE_COLORS[label]
            start = y
            for k, values in groups[metric][label].items():
                x = np.asarray(values) * 1e3
                jitter = rng.uniform(-0.18, 0.18, len(x))
                ax.scatter(x, y + jitter, s=14, color=color, alpha=0.7, linewidths=0, zorder=3)
                ax.plot([np.median(x)] * 2, [y - 0.32, y + 0.32], color="#222222", linewidth=1.6, zorder=4)
                ticks.append((y, f"{label} p{k + 1}"))
                y += 1
            if value is not None and y > start:
                ax.plot(
                    [value * 1e3] * 2, [start - 0.45, y - 0.55], color=color, linestyle="--", linewidth=1.2
                )
            y += 1  # a gap between the sides
        head = f"{compare.LABELS.get(metric, metric)} (ms): {m.verdict}"
        if m.ratio is not None:
            head += f", ratio {m.ratio:.3f}"
        if m.p_value is not None:
            head += f", p {fmt_p(m.p_value)}"
        ax.set_title(mpl_text(head), fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=LABEL_PT)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        if ticks:
            ax.set_yticks([t for t, _ in ticks], labels=[text for _, text in ticks], fontsize=LABEL_PT)
        ax.set_ylim(max(y - 1.5, 0.5), -0.6)
    return fig


def distribution_figures(cmp: Comparison, base: Run, new: Run) -> dict[str, Figure]:
    """A distribution_figure per cell of distribution_cells, named by distribution_name; cells
    whose records are not in both runs (a comparison built elsewhere) are left out."""
    out = {}
    for c in distribution_cells(cmp):
        b, n = base.cells.get(c.cell_id), new.cells.get(c.cell_id)
        if b is not None and n is not None:
            out[distribution_name(c.cell_id)] = distribution_figure(c, b, n)
    return out
