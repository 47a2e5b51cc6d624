"""Figures and a self-contained HTML report of a run or of a comparison of two runs.

`tfbench report RUN_DIR --html FILE --png DIR` and `tfbench compare BASE NEW --html FILE --png DIR`
call `report_run` and `report_compare`. A run gets three figures of its measured (`ok`) cells:

- "latency": e2e latency per cell (horizontal bars at p50, whiskers to p95), in cell order;
- "ttft_tpot": TTFT and TPOT side by side, one group of bars per shape, one bar per combo
  (attention implementation, compile mode, kernels, continuous batching: "sdpa+compile:default");
- "throughput": e2e throughput against batch size, one line per combo and shape (sequence length,
  tokens generated), p50 with whiskers from p5 to p95.

A comparison gets one figure per metric: the ratio NEW/BASE of each cell with its 95% interval,
coloured by that metric's verdict, a line at 1 and the threshold band shaded.

Percentiles come from the raw samples of each record (`runs[i][metric]`; continuous batching cells
pool their requests, as the record's stats do), so they equal the record's stats. Cells that were
not measured (failed, oom, skipped, ...) are never drawn (no zero bars): the HTML lists them with
their reasons. matplotlib is imported inside the drawing functions only, so importing this module
stays cheap; figures are drawn on the Agg canvas (no display needed) and never touch pyplot's state.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.analysis.compare import (
    DEFAULT_ALPHA,
    HIGHER_IS_BETTER,
    IMPROVEMENT,
    INSUFFICIENT,
    LABELS,
    MEMORY_METRIC,
    METRICS,
    NOT_TESTED,
    REGRESSION,
    UNCHANGED,
    Comparison,
    Run,
    _columns,
    _threshold_text,
    compare_runs,
    fmt_ratio,
    headline,
    load_run,
)
from bench.errors import UserError
from bench.output.tables import combo_label, fmt_bytes, fmt_rate

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
MAX_CELLS = 400  # per-cell figures draw at most this many rows (the HTML table lists every cell)
MAX_HEIGHT_IN = 100.0  # 12,000 pixels at DPI
ROW_IN = 0.22  # inches per row of a per-cell figure
MAX_LINES = 40  # lines of the throughput figure (one per combo and shape)
VERDICT_COLORS = {
    REGRESSION: "#d62728",
    IMPROVEMENT: "#2ca02c",
    UNCHANGED: "#7f7f7f",
    INSUFFICIENT: "#c7c7c7",
    NOT_TESTED: "#7f7f7f",
}
FLAGGED_COLOR = "#ff7f0e"  # peak memory (not tested) beyond its threshold
RUN_FIGURES = ("latency", "ttft_tpot", "throughput")


# ------------------------------------------------------------------------------------------ data


def _positive(items: Iterable[Any]) -> list[float]:
    out = []
    for v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            out.append(float(v))
    return out


def values(record: dict[str, Any], metric: str) -> list[float]:
    """The raw samples of a metric: one per run, or one per request where the run has requests only.

    Continuous batching cells time ttft and tpot per request: those are pooled over the runs, as the
    record's stats are, so that the percentiles drawn are the ones the tables show.
    """
    out: list[Any] = []
    for run in record.get("runs") or []:
        if not isinstance(run, dict):
            continue
        if metric not in run and isinstance(run.get("requests"), list):
            out.extend(r.get(metric) for r in run["requests"] if isinstance(r, dict))
        else:
            out.append(run.get(metric))
    return _positive(out)


def percentiles(record: dict[str, Any], metric: str) -> dict[str, float] | None:
    """p5, p50 and p95 of a metric's raw samples (the record's stats where it has no raw runs), or None."""
    raw = values(record, metric)
    if raw:
        p5, p50, p95 = np.percentile(np.asarray(raw), [5, 50, 95])
        return {"p5": float(p5), "p50": float(p50), "p95": float(p95), "n": len(raw)}
    stats = (record.get("stats") or {}).get(metric) or {}
    if _positive([stats.get("p50")]):
        p50 = float(stats["p50"])
        p95 = _positive([stats.get("p95")])
        return {"p5": p50, "p50": p50, "p95": p95[0] if p95 else p50, "n": int(stats.get("n") or 0)}
    return None


def _index(record: dict[str, Any]) -> int:
    value = (record.get("cell") or {}).get("index")
    return value if isinstance(value, int) else 0


def _records(run: Run) -> list[dict[str, Any]]:
    return sorted(run.cells.values(), key=lambda r: (_index(r), str(r.get("cell_id"))))


def ok_records(run: Run) -> list[dict[str, Any]]:
    return [r for r in _records(run) if r.get("status") == "ok"]


def _shape(cell: dict[str, Any]) -> str:
    return f"b{cell.get('batch_size')} s{cell.get('sequence_length')} n{cell.get('num_tokens_to_generate')}"


def _name(record: dict[str, Any]) -> str:
    cell = record.get("cell") or {}
    return str(cell.get("name") or record.get("cell_id") or "?")


def _combo(cell: dict[str, Any]) -> str:
    try:
        return combo_label(cell)
    except (KeyError, TypeError):  # a record without the axes
        return str(cell.get("attn_implementation") or "?")


def hardware(meta: dict[str, Any]) -> str:
    """'8x NVIDIA H100 80GB HBM3', or the CPU where the run had no GPU."""
    env = meta.get("environment") or {}
    gpus = [str(g.get("name") or "GPU") for g in env.get("gpus") or [] if isinstance(g, dict)]
    if gpus:
        return ", ".join(f"{n}x {name}" if n > 1 else name for name, n in Counter(gpus).items())
    if env.get("cpu"):
        return f"{env['cpu']} (CPU)"
    return str((meta.get("identity") or {}).get("hardware") or "unknown hardware")


# ------------------------------------------------------------------------------------- drawing


def _new_figure(width: float, height: float) -> Figure:
    """A Figure on the Agg canvas, outside pyplot (no global state to leak, no display needed)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # leave a notebook's interactive backend alone
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, min(height, MAX_HEIGHT_IN)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _t(text: Any) -> str:
    """Text for matplotlib: a '$' would start mathtext."""
    return str(text).replace("$", r"\$")


def _colors(labels: Iterable[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    unique = list(dict.fromkeys(labels))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(unique)}


def _run_colors(run: Run) -> dict[str, Any]:
    """A colour per combo, in cell order: the same combo has the same colour in every figure of a run."""
    return _colors(_combo(r.get("cell") or {}) for r in _records(run))


def _combo_legend(fig: Figure, colors: dict[str, Any], present: Iterable[str]) -> None:
    """The combos drawn, in cell order, below the axes (never over the bars)."""
    from matplotlib.patches import Patch

    shown = set(present)
    handles = [Patch(color=c, label=_t(k)) for k, c in colors.items() if k in shown]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)


def _title(run: Run, what: str) -> str:
    cfg = run.meta.get("config") or {}
    model = " · ".join(str(x) for x in (cfg.get("model"), cfg.get("dtype")) if x)
    return _t(f"{what}\n{run.run_id} · {hardware(run.meta)}" + (f" · {model}" if model else ""))


def _log_if_wide(ax: Axes, axis: str, low: float, high: float, wide: float = 30.0) -> bool:
    if low > 0 and high / low > wide:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        (ax.set_xlim if axis == "x" else ax.set_ylim)(low / 1.6, high * 1.6)
        return True
    return False


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, _t(text), ha="center", va="center", fontsize=12, color="#555555", wrap=True)
    return fig


def latency_figure(run: Run) -> Figure:
    """e2e latency of every measured cell: a bar at p50, a whisker to p95, cells in plan order."""
    rows = [(r, p) for r in ok_records(run) if (p := percentiles(r, "e2e_latency"))]
    shown = rows[:MAX_CELLS]
    fig = _new_figure(11.0, 1.9 + ROW_IN * max(len(shown), 3))
    what = "End-to-end latency per cell (bar: p50, whisker: p95)"
    if len(rows) > len(shown):
        what += f": the first {len(shown)} of {len(rows)} cells"
    if not shown:
        fig.suptitle(_title(run, what))
        return _empty(fig, "no measured cell has an e2e latency")
    ax = fig.add_subplot()
    y = np.arange(len(shown))
    p50 = np.array([p["p50"] for _, p in shown]) * 1e3
    p95 = np.array([p["p95"] for _, p in shown]) * 1e3
    combos = [_combo(r["cell"]) for r, _ in shown]
    colors = _run_colors(run)
    ax.barh(y, p50, height=0.72, color=[colors[c] for c in combos], label="_bars")
    ax.errorbar(
        p50, y, xerr=[np.zeros_like(p50), p95 - p50], fmt="none", ecolor="#222222", elinewidth=0.9, capsize=2
    )
    log = _log_if_wide(ax, "x", float(p50.min()), float(p95.max()))
    ax.set_yticks(y, labels=[_t(_name(r)) for r, _ in shown], fontsize=8 if len(shown) <= 120 else 6)
    ax.set_ylim(len(shown) - 0.5, -0.5)  # the first cell on top
    ax.set_xlabel("end-to-end latency (ms" + (", log scale)" if log else ")"))
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    if len(set(combos)) > 1:
        _combo_legend(fig, colors, combos)
    ax.set_title(_title(run, what), fontsize=10, loc="left")
    return fig


def ttft_tpot_figure(run: Run) -> Figure:
    """TTFT and TPOT side by side: a group of bars per shape, a bar per combo; p50 with p95 whiskers."""
    recs = ok_records(run)
    all_recs = _records(run)
    combos = list(dict.fromkeys(_combo(r["cell"]) for r in all_recs))
    shapes = sorted(
        {
            (
                r["cell"].get("batch_size") or 0,
                r["cell"].get("sequence_length") or 0,
                r["cell"].get("num_tokens_to_generate") or 0,
            )
            for r in all_recs
        }
    )
    by_slot = {(_combo(r["cell"]), _shape(r["cell"])): r for r in all_recs}
    slots = len(combos) + 1  # a gap between groups
    total = len(shapes)
    shapes = shapes[: max(1, MAX_CELLS // slots)]  # a figure stays readable (and renders in seconds)
    rows = len(shapes) * slots
    fig = _new_figure(14.0, 2.2 + 0.16 * max(rows, 8))
    what = "TTFT and TPOT per shape and combo (bar: p50, whisker: p95)"
    if total > len(shapes):
        what += f": the first {len(shapes)} of {total} shapes"
    fig.suptitle(_title(run, what), fontsize=10, x=0.01, ha="left")
    if not recs:
        return _empty(fig, "no measured cell")
    axes = fig.subplots(1, 2, sharey=True)
    colors = _run_colors(run)
    labels = [f"b{b} s{s} n{n}" for b, s, n in shapes]
    drawn: set[str] = set()
    for ax, metric, label in zip(
        axes, ("ttft", "tpot"), ("TTFT: time to first token (ms)", "TPOT: time per output token (ms)")
    ):
        lows: list[float] = []
        highs: list[float] = []
        for g, shape in enumerate(labels):
            for k, combo in enumerate(combos):
                y = g * slots + k
                rec = by_slot.get((combo, shape))
                if rec is None:
                    continue
                p = percentiles(rec, metric) if rec.get("status") == "ok" else None
                if p is None:
                    # Not measured, or no such metric (one generated token has no TPOT): say so, draw nothing.
                    why = rec.get("status") if rec.get("status") != "ok" else "n/a"
                    ax.text(
                        0.005,
                        y,
                        _t(why),
                        transform=ax.get_yaxis_transform(),
                        fontsize=6,
                        color="#888888",
                        va="center",
                    )
                    continue
                p50, p95 = p["p50"] * 1e3, p["p95"] * 1e3
                ax.barh(y, p50, height=0.8, color=colors[combo])
                ax.errorbar(
                    p50, y, xerr=[[0], [p95 - p50]], fmt="none", ecolor="#222222", elinewidth=0.8, capsize=1.5
                )
                drawn.add(combo)
                lows.append(p50)
                highs.append(p95)
        if lows:
            if _log_if_wide(ax, "x", min(lows), max(highs)):
                label = label.replace("(ms)", "(ms, log scale)")
        else:
            ax.text(0.5, 0.5, f"no cell measured {metric.upper()}", transform=ax.transAxes, ha="center")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3, which="both")
        ax.set_axisbelow(True)
    centers = [g * slots + (len(combos) - 1) / 2 for g in range(len(shapes))]
    axes[0].set_yticks(centers, labels=labels, fontsize=8)
    axes[0].set_ylim(rows - 0.5, -1.0)
    _combo_legend(fig, colors, drawn)
    return fig


def throughput_figure(run: Run) -> Figure:
    """e2e throughput against batch size: a line per combo and shape; p50, whiskers p5 to p95."""
    recs = ok_records(run)
    fig = _new_figure(12.0, 6.5)
    what = "End-to-end throughput against batch size (p50, whiskers p5 to p95)"
    if not recs:
        fig.suptitle(_title(run, what))
        return _empty(fig, "no measured cell")
    seqs = {r["cell"].get("sequence_length") for r in recs}
    news = {r["cell"].get("num_tokens_to_generate") for r in recs}
    lines: dict[tuple[str, Any, Any], list[tuple[int, dict[str, float]]]] = {}
    for r in recs:
        p = percentiles(r, "e2e_throughput")
        if p is None:
            continue
        cell = r["cell"]
        key = (_combo(cell), cell.get("sequence_length") or 0, cell.get("num_tokens_to_generate") or 0)
        lines.setdefault(key, []).append((int(cell.get("batch_size") or 0), p))
    ax = fig.add_subplot()
    ax.set_title(_title(run, what), fontsize=10, loc="left")
    if not lines:
        ax.axis("off")
        ax.text(0.5, 0.5, "no measured cell has an e2e throughput", ha="center", transform=ax.transAxes)
        return fig
    colors = _run_colors(run)
    total = len(lines)
    if total > MAX_LINES:  # hundreds of lines are unreadable: keep the first shapes in order
        lines = {
            k: lines[k]
            for k in sorted(lines, key=lambda k: (k[1], k[2], list(colors).index(k[0])))[:MAX_LINES]
        }
        ax.set_title(
            _title(run, what + f": {MAX_LINES} of {total} lines, the shortest shapes"),
            fontsize=10,
            loc="left",
        )
    shapes = sorted({(k[1], k[2]) for k in lines})
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    batches: set[int] = set()
    low, high = math.inf, 0.0
    for key in sorted(lines, key=lambda k: (list(colors).index(k[0]), k[1], k[2])):
        combo, s, n = key
        points = sorted(lines[key], key=lambda bp: bp[0])
        x = np.array([b for b, _ in points], dtype=float)
        p50 = np.array([p["p50"] for _, p in points])
        err = [p50 - np.array([p["p5"] for _, p in points]), np.array([p["p95"] for _, p in points]) - p50]
        parts = [combo]
        if len(seqs) > 1:
            parts.append(f"s{s}")
        if len(news) > 1:
            parts.append(f"n{n}")
        i = shapes.index((s, n))
        ax.errorbar(
            x,
            p50,
            yerr=err,
            color=colors[combo],
            linestyle=styles[i % len(styles)],
            marker=markers[i % len(markers)],
            markersize=5,
            capsize=2,
            linewidth=1.4,
            label=_t(" ".join(parts)),
        )
        batches.update(int(b) for b in x)
        low, high = min(low, float(p50.min())), max(high, float(p50.max()))
    ordered = sorted(batches)
    if len(ordered) > 1 and ordered[0] > 0 and ordered[-1] / ordered[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ordered, labels=[str(b) for b in ordered])
    ax.minorticks_off()
    log = _log_if_wide(ax, "y", low, high)
    ax.set_xlabel("batch size (sequences)")
    ax.set_ylabel("e2e throughput (tokens/s" + (", log scale)" if log else ")"))
    ax.grid(alpha=0.3, which="both")
    title = None
    if len(seqs) == 1 and len(news) == 1:
        title = f"s{next(iter(seqs))} n{next(iter(news))}"
    if len(lines) <= 6:
        ax.legend(fontsize=8, title=title, title_fontsize=8, loc="best")
    else:  # many lines: beside the plot, not over it
        handles, names = ax.get_legend_handles_labels()
        fig.legend(
            handles,
            names,
            fontsize=8,
            title=title,
            title_fontsize=8,
            loc="outside right upper",
            ncols=1 + (len(lines) - 1) // 30,
        )
    return fig


def run_figures(run: Run) -> dict[str, Figure]:
    """The run's figures by name ("latency", "ttft_tpot", "throughput"); empty without a measured cell."""
    if not ok_records(run):
        return {}
    return {
        "latency": latency_figure(run),
        "ttft_tpot": ttft_tpot_figure(run),
        "throughput": throughput_figure(run),
    }


def compare_points(cmp: Comparison, metric: str = "tpot") -> list[dict[str, Any]]:
    """What compare_figure draws, one dict per cell in cell order: name, ratio, interval, verdict, color."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
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
                "index": c.cell.get("index") if isinstance(c.cell.get("index"), int) else 0,
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

    A line at 1, the threshold band shaded; regressions red, improvements green, unchanged grey,
    insufficient data light grey (hollow). Each verdict is one errorbar artist whose label is the
    verdict (`compare_points` returns the same data).
    """
    points = compare_points(cmp, metric)
    total = len(points)
    if total > MAX_CELLS:  # the most notable ones: cmp.cells is ordered by verdict, then effect size
        rank = {c.cell_id: i for i, c in enumerate(cmp.cells)}
        points = sorted(
            sorted(points, key=lambda p: rank[p["cell_id"]])[:MAX_CELLS], key=lambda p: p["index"]
        )
    fig = _new_figure(11.0, 2.3 + ROW_IN * max(len(points), 3))
    label = LABELS.get(metric, metric)
    hw = cmp.new.get("hardware") or ""
    title = f"{label}: ratio NEW/BASE per cell with 95% interval ({headline(cmp)})\n"
    title += f"{cmp.base['run_id']} -> {cmp.new['run_id']}" + (f" · {hw}" if hw else "")
    if total > len(points):
        title += f" · the {len(points)} most notable of {total} cells"
    ax = fig.add_subplot()
    ax.set_title(_t(title), fontsize=10, loc="left")
    if not points:
        ax.axis("off")
        ax.text(0.5, 0.5, _t(f"no cell measured {label} in both runs"), ha="center", transform=ax.transAxes)
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
    order = [REGRESSION, IMPROVEMENT, UNCHANGED, INSUFFICIENT, NOT_TESTED]
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
            fmt="o",
            color=color,
            ecolor=color,
            markerfacecolor="white" if verdict == INSUFFICIENT else color,
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
        labels=[_t(p["name"]) for p in points],
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
    return {f"compare_{m}": compare_figure(cmp, m) for m in _columns(cmp)}


# ------------------------------------------------------------------------------------- writing


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "figure"


def png_bytes(figure: Figure | bytes) -> bytes:
    """The PNG of a figure (bytes are taken as an already rendered PNG)."""
    if isinstance(figure, (bytes, bytearray)):
        return bytes(figure)
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def render(figures: Mapping[str, Figure | bytes]) -> dict[str, bytes]:
    """Every figure as PNG bytes, drawn once (write_png and write_html take the result too)."""
    return {name: png_bytes(fig) for name, fig in figures.items()}


def write_png(figures: Mapping[str, Figure | bytes], out_dir: str | os.PathLike[str]) -> list[Path]:
    """One `<name>.png` per figure in out_dir (created), at DPI; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out / f"{_file_name(name)}.png"
        path.write_bytes(png_bytes(fig))
        paths.append(path)
    return paths


STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name, td.id { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: nowrap; }
td.id { color: #888; }
.ok, .improvement { color: #1a7f1a; } .regression, .failed, .oom, .timeout, .lost { color: #c62828; }
.skipped, .unchanged, .not-run { color: #777; } .interrupted, .insufficient-data, .flagged { color: #b26a00; }
td.regression, td.improvement { font-weight: bold; }
.meta { color: #555; } .warning { color: #b26a00; } .empty { color: #777; font-style: italic; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
"""


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _cls(text: Any) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", str(text).lower()).strip("-")


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)  # headers are built here: already HTML
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def write_html(
    title: str,
    summary_html: str,
    figures: Mapping[str, Figure | bytes],
    path: str | os.PathLike[str],
) -> Path:
    """One self-contained HTML file: the title (escaped), the summary (an HTML fragment as
    run_summary_html / compare_summary_html build it, with its text escaped) and the figures as
    base64 PNG data URIs. No external asset: no scripts, stylesheets, fonts or images to fetch."""
    out = Path(path)
    if out.parent:
        out.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        summary_html,
        "<h2>Figures</h2>",
    ]
    if not figures:
        parts.append('<p class="empty">No figures: no cell was measured.</p>')
    for name, fig in figures.items():
        data = base64.b64encode(png_bytes(fig)).decode("ascii")
        parts.append(
            f'<figure id="{_e(_file_name(name))}"><img alt="{_e(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(name)}</figcaption></figure>"
        )
    parts += ["</body>", "</html>", ""]
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _ms(p: dict[str, float] | None, key: str) -> str:
    return "-" if p is None else f"{p[key] * 1e3:.2f}"


def _run_meta_html(run: Run) -> str:
    meta = run.meta
    cfg = meta.get("config") or {}
    env = meta.get("environment") or {}
    pkgs = env.get("packages") or {}
    items = [
        ("run id", run.run_id),
        ("status", meta.get("status")),
        ("hardware", hardware(meta)),
        ("model", cfg.get("model")),
        ("dtype", cfg.get("dtype")),
        ("started", meta.get("started_at")),
        ("finished", meta.get("finished_at")),
        ("measured commit", (meta.get("measured_commit") or {}).get("sha")),
        *((k, pkgs.get(k)) for k in ("torch", "transformers", "tfbench") if pkgs.get(k)),
    ]
    return '<p class="meta">' + " · ".join(f"{_e(k)}: <b>{_e(v)}</b>" for k, v in items if v) + "</p>"


def _not_run(run: Run) -> list[dict[str, Any]]:
    """Planned cells without a record (a run that stopped early), as records saying so."""
    planned = ((run.meta.get("plan") or {}).get("cells")) or []
    out = []
    for cell in planned:
        if isinstance(cell, dict) and cell.get("cell_id") and cell["cell_id"] not in run.cells:
            out.append(
                {
                    "cell_id": cell["cell_id"],
                    "status": "not run",
                    "cell": cell,
                    "reason": "no record: the run ended before this cell",
                }
            )
    return out


def run_summary_html(run: Run) -> str:
    """The run's summary as an HTML fragment: what ran where, every cell, and the unmeasured ones with reasons."""
    records = _records(run)
    missing = _not_run(run)
    every = sorted(records + missing, key=lambda r: (_index(r), str(r.get("cell_id"))))
    counts = Counter(str(r.get("status")) for r in every)
    parts = [_run_meta_html(run)]
    parts.append(
        "<p>"
        + _e(
            f"{len(every)} cells: "
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda x: -x[1]))
        )
        + "</p>"
    )
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        parts.append('<p class="empty">No cell of this run was measured (status ok): nothing to plot.</p>')
    headers = ["#", "cell", "shape", "status"]
    headers += [f"{h}<br><small>ms</small>" for h in ("e2e p50", "e2e p95", "ttft p50", "tpot p50")]
    headers += ["tok/s<br><small>p50</small>", "peak mem", "n", "cell id"]
    rows = []
    for r in every:
        cell = r.get("cell") or {}
        status = str(r.get("status"))
        if status == "ok":
            e2e = percentiles(r, "e2e_latency")
            tput = percentiles(r, "e2e_throughput")
            nums = [
                _ms(e2e, "p50"),
                _ms(e2e, "p95"),
                _ms(percentiles(r, "ttft"), "p50"),
                _ms(percentiles(r, "tpot"), "p50"),
                fmt_rate(tput["p50"] if tput else None),
                fmt_bytes((r.get("memory") or {}).get("peak_bytes")),
                str(len(values(r, "e2e_latency")) or (e2e or {}).get("n", 0)),
            ]
        else:
            nums = ["-"] * 7
        rows.append(
            f"<tr><td class=num>{_e(cell.get('index', ''))}</td><td class=name>{_e(_name(r))}</td>"
            f"<td class=name>{_e(_shape(cell))}</td><td class={_cls(status)}>{_e(status)}</td>"
            + "".join(f"<td class=num>{_e(v)}</td>" for v in nums)
            + f"<td class=id>{_e(str(r.get('cell_id'))[:8])}</td></tr>"
        )
    parts += ["<h2>Cells</h2>", _table(headers, rows)]
    unmeasured = [r for r in every if r.get("status") != "ok"]
    if unmeasured:
        rows = [
            f"<tr><td class=name>{_e(_name(r))}</td><td class=name>{_e(_shape(r.get('cell') or {}))}</td>"
            f"<td class={_cls(r.get('status'))}>{_e(r.get('status'))}</td>"
            f"<td>{_e(r.get('reason') or r.get('error') or '')}</td>"
            f"<td class=id>{_e(str(r.get('cell_id'))[:8])}</td></tr>"
            for r in unmeasured
        ]
        parts += [
            f"<h2>Cells without measurements ({len(unmeasured)})</h2>",
            _table(["cell", "shape", "status", "reason", "cell id"], rows),
        ]
    return "\n".join(parts)


def compare_summary_html(cmp: Comparison) -> str:
    """The comparison as an HTML fragment: headline, warnings, ratios per cell and metric, cells not compared."""

    def describe(info: dict[str, Any]) -> str:
        pkgs = info.get("packages") or {}
        extra = [f"commit {str(info['measured_commit'])[:12]}"] if info.get("measured_commit") else []
        extra += [f"{k} {pkgs[k]}" for k in ("transformers", "torch") if pkgs.get(k)]
        if info.get("hardware"):
            extra.append(str(info["hardware"]))
        return f"<b>{_e(info.get('run_id'))}</b>" + (f" ({_e(', '.join(extra))})" if extra else "")

    parts = [
        f"<p><b>{_e(headline(cmp))}</b></p>",
        f'<p class="meta">BASE {describe(cmp.base)} &rarr; NEW {describe(cmp.new)}</p>',
    ]
    parts += [f'<p class="warning">warning: {_e(w)}</p>' for w in cmp.warnings]
    if cmp.notes:
        parts.append(f'<p class="meta">differences: {_e("; ".join(cmp.notes))}</p>')
    columns = _columns(cmp)
    if cmp.cells:
        headers = ["cell", "verdict", *(_e(LABELS[m]) for m in columns), "cell id"]
        rows = []
        for c in cmp.cells:
            tds = []
            for m in columns:
                mc = c.metrics.get(m)
                cls = "num"
                if mc is not None:
                    cls += " " + _cls(mc.verdict)
                    if mc.verdict == NOT_TESTED and mc.beyond_threshold:
                        cls += " flagged"
                title = f' title="{_e(mc.note)}"' if mc is not None and mc.note else ""
                tds.append(f'<td class="{cls}"{title}>{_e(fmt_ratio(mc))}</td>')
            rows.append(
                f"<tr><td class=name>{_e(c.name)}</td><td class={_cls(c.verdict)}>{_e(c.verdict)}</td>"
                + "".join(tds)
                + f"<td class=id>{_e(c.cell_id[:8])}</td></tr>"
            )
        parts += [f"<h2>Compared cells ({len(cmp.cells)})</h2>", _table(headers, rows)]
    others = [("only in BASE", s) for s in cmp.only_base] + [("only in NEW", s) for s in cmp.only_new]
    others += [("not compared", s) for s in cmp.not_compared]
    if others:
        rows = [
            f"<tr><td class=name>{_e(s.name)}</td><td>{_e(why)}</td>"
            f"<td class={_cls(s.base_status or 'absent')}>{_e(s.base_status or 'absent')}</td>"
            f"<td class={_cls(s.new_status or 'absent')}>{_e(s.new_status or 'absent')}</td>"
            f"<td>{_e(s.new_reason or s.base_reason or '')}</td><td class=id>{_e(s.cell_id[:8])}</td></tr>"
            for why, s in others
        ]
        parts += [
            f"<h2>Cells not compared ({len(others)})</h2>",
            _table(["cell", "why", "BASE", "NEW", "reason", "cell id"], rows),
        ]
    if not cmp.cells and not others:
        parts.append('<p class="empty">No cells in either run.</p>')
    parts.append(
        '<p class="meta">'
        + _e(
            f"Ratios are NEW/BASE medians with a 95% interval [low, high]; a verdict needs p < {cmp.alpha:g} "
            f"and a change beyond {_threshold_text(cmp)}. Latencies: above 1 is slower; throughputs: below 1 "
            f"is slower. Peak memory is one value per run: its ratio is not tested. Method: {cmp.method}."
        )
        + "</p>"
    )
    return "\n".join(parts)


def _write(
    title: str, summary: str, figures: Mapping[str, Figure], html_path: Any, png_dir: Any
) -> list[Path]:
    pngs = render(figures) if figures and (html_path is not None or png_dir is not None) else {}
    written: list[Path] = []
    # A file where a directory belongs, a NUL, no permission: the path given is wrong (exit 2).
    try:
        if png_dir is not None:
            written += write_png(pngs, png_dir)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"--png {str(png_dir)!r}: cannot write there: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        if html_path is not None:
            written.append(write_html(title, summary, pngs, html_path))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"--html {str(html_path)!r}: cannot write there: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return written


def write_run_report(
    run: Run, html: str | os.PathLike[str] | None, png_dir: str | os.PathLike[str] | None
) -> list[Path]:
    """The run's figures as PNGs in png_dir and/or its HTML report at html; the paths written."""
    figures = run_figures(run) if (html is not None or png_dir is not None) else {}
    return _write(f"tfbench run {run.run_id}", run_summary_html(run), figures, html, png_dir)


def report_run(
    run_dir: str | os.PathLike[str],
    html: str | os.PathLike[str] | None = None,
    png_dir: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """`tfbench report RUN_DIR [--html FILE] [--png DIR]`: PNGs first, then the HTML; UserError if not a run."""
    return write_run_report(load_run(run_dir), html, png_dir)


def write_compare_report(
    cmp: Comparison, html: str | os.PathLike[str] | None, png_dir: str | os.PathLike[str] | None
) -> list[Path]:
    """A comparison's figures (one per metric) as PNGs and/or its HTML report; the paths written."""
    figures = compare_figures(cmp) if (html is not None or png_dir is not None) else {}
    title = f"tfbench compare {cmp.base['run_id']} -> {cmp.new['run_id']}"
    return _write(title, compare_summary_html(cmp), figures, html, png_dir)


def report_compare(
    base_dir: str | os.PathLike[str],
    new_dir: str | os.PathLike[str],
    html: str | os.PathLike[str] | None = None,
    png_dir: str | os.PathLike[str] | None = None,
    thresholds: dict[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> list[Path]:
    """`tfbench compare BASE NEW --html FILE --png DIR`: compare_runs, then write_compare_report."""
    cmp = compare_runs(load_run(base_dir), load_run(new_dir), thresholds, alpha)
    return write_compare_report(cmp, html, png_dir)
