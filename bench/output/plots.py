"""Figures and a self-contained HTML report of a run or of a comparison of two runs.

`tfbench report RUN_DIR --html FILE --png DIR` and `tfbench compare BASE NEW --html FILE --png DIR`
call `report_run` and `report_compare`. A run gets three figures of its measured (`ok`) cells:

- "latency": e2e latency per cell (horizontal bars at p50, whiskers from p5 to p95), in cell order;
- "ttft_tpot": TTFT above TPOT, one group of bars per shape, one bar per combo (attention
  implementation, compile mode, kernels, continuous batching: "sdpa, compile default"), p50 with
  whiskers from p5 to p95; each panel as wide as the page, so that its labels stay readable;
- "throughput": e2e throughput against batch size, one line per combo and shape (sequence length,
  tokens generated), p50 with whiskers from p5 to p95.


Percentiles come from the raw samples of each record (`runs[i][metric]`; continuous batching cells
pool their requests, as the record's stats do), so they equal the record's stats. Cells that were
not measured (failed, oom, skipped, ...) are never drawn (no zero bars): the HTML lists them with
their reasons. matplotlib is imported inside the drawing functions only, so importing this module
stays cheap; figures are drawn on the Agg canvas (no display needed) and never touch pyplot's state.
"""

from __future__ import annotations

import io
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.plan.matrix import Cell, combo_name
from bench.results.records import CellRecord
from bench.results.store import Run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
MAX_CELLS = 400  # per-cell figures draw at most this many rows (the HTML table lists every cell)
MAX_HEIGHT_IN = 100.0  # 12,000 pixels at DPI
ROW_IN = 0.22  # inches per row of a per-cell figure
BAR_IN = 0.2  # inches per bar of the ttft/tpot panels
# Figures are 11 inches wide (1,320 pixels at DPI); on a page about 1,000 pixels wide a 9-point
# label is then about 11 pixels high.
WIDTH_IN = 11.0
LABEL_PT = 9
MAX_LINES = 40  # lines of the throughput figure (one per combo and shape)
RUN_FIGURES = ("latency", "ttft_tpot", "throughput")


# ------------------------------------------------------------------------------------------ data


def percentiles(record: CellRecord, metric: str) -> dict[str, float] | None:
    """p5, p50 and p95 of a metric's raw samples (continuous batching pools its requests, as the
    record's stats do), else of the record's stats where it has no raw runs; None when unmeasured."""
    raw = record.pooled(metric)
    if raw:
        p5, p50, p95 = np.percentile(np.asarray(raw), [5, 50, 95])
        return {"p5": float(p5), "p50": float(p50), "p95": float(p95), "n": len(raw)}
    p50 = record.stat(metric, "p50")
    if p50 is not None and p50 > 0:
        p95 = record.stat(metric, "p95")
        n = record.stat(metric, "n") or 0
        return {"p5": p50, "p50": p50, "p95": p95 if p95 and p95 > 0 else p50, "n": int(n)}
    return None


def ok_records(run: Run) -> list[CellRecord]:
    return [r for r in run.records() if r.ok]


def shape_label(cell: Cell) -> str:
    return f"b{cell.batch_size} s{cell.sequence_length} n{cell.num_tokens_to_generate}"


def combo_label(cell: Cell) -> str:
    """The cell's combination as its name says it: 'sdpa, compile default, kernels', and its
    quantization when there is one."""
    combo = combo_name(cell.attn_implementation, cell.compile, cell.kernelize, cell.continuous_batching)
    return combo if cell.quantization == "none" else f"{combo}, {cell.quantization}"


# ------------------------------------------------------------------------------------- drawing


def new_figure(width: float, height: float) -> Figure:
    """A Figure on the Agg canvas, outside pyplot (no global state to leak, no display needed)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # leave a notebook's interactive backend alone
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, min(height, MAX_HEIGHT_IN)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def mpl_text(text: Any) -> str:
    """Text for matplotlib: a '$' would start mathtext."""
    return str(text).replace("$", r"\$")


def _colors(labels: Iterable[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    unique = list(dict.fromkeys(labels))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(unique)}


def _run_colors(run: Run) -> dict[str, Any]:
    """A colour per combo, in cell order: the same combo has the same colour in every figure of a run."""
    return _colors(combo_label(r.cell) for r in run.records())


def _combo_legend(fig: Figure, colors: dict[str, Any], present: Iterable[str]) -> None:
    """The combos drawn, in cell order, below the axes (never over the bars)."""
    from matplotlib.patches import Patch

    shown = set(present)
    handles = [Patch(color=c, label=mpl_text(k)) for k, c in colors.items() if k in shown]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=LABEL_PT)


def _title(run: Run, what: str) -> str:
    cfg = run.meta.config
    model = " · ".join(str(x) for x in (cfg.get("model"), cfg.get("dtype")) if x)
    return mpl_text(f"{what}\n{run.run_id} · {run.meta.hardware}" + (f" · {model}" if model else ""))


def _log_if_wide(ax: Axes, axis: str, low: float, high: float, wide: float = 30.0) -> bool:
    if low > 0 and high / low > wide:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        (ax.set_xlim if axis == "x" else ax.set_ylim)(low / 1.6, high * 1.6)
        return True
    return False


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, mpl_text(text), ha="center", va="center", fontsize=12, color="#555555", wrap=True)
    return fig


def _whiskers(p: dict[str, float]) -> tuple[float, float, float]:
    """(p5, p50, p95) of percentiles() in milliseconds."""
    return p["p5"] * 1e3, p["p50"] * 1e3, p["p95"] * 1e3


def latency_figure(run: Run) -> Figure:
    """e2e latency of every measured cell: a bar at p50, whiskers from p5 to p95, cells in plan order."""
    rows = [(r, p) for r in ok_records(run) if (p := percentiles(r, "e2e_latency"))]
    shown = rows[:MAX_CELLS]
    fig = new_figure(WIDTH_IN, 1.9 + ROW_IN * max(len(shown), 3))
    what = "End-to-end latency per cell (bar: p50, whiskers: p5 to p95)"
    if len(rows) > len(shown):
        what += f": the first {len(shown)} of {len(rows)} cells"
    if not shown:
        fig.suptitle(_title(run, what))
        return _empty(fig, "no measured cell has an e2e latency")
    ax = fig.add_subplot()
    y = np.arange(len(shown))
    p5, p50, p95 = (np.array(v) for v in zip(*(_whiskers(p) for _, p in shown)))
    combos = [combo_label(r.cell) for r, _ in shown]
    colors = _run_colors(run)
    ax.barh(y, p50, height=0.72, color=[colors[c] for c in combos], label="_bars")
    ax.errorbar(p50, y, xerr=[p50 - p5, p95 - p50], fmt="none", ecolor="#222222", elinewidth=0.9, capsize=2)
    log = _log_if_wide(ax, "x", float(p5.min()), float(p95.max()))
    ax.set_yticks(
        y, labels=[mpl_text(r.name) for r, _ in shown], fontsize=LABEL_PT if len(shown) <= 120 else 6
    )
    ax.set_ylim(len(shown) - 0.5, -0.5)  # the first cell on top
    ax.set_xlabel("end-to-end latency (ms" + (", log scale)" if log else ")"))
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    if len(set(combos)) > 1:
        _combo_legend(fig, colors, combos)
    ax.set_title(_title(run, what), fontsize=10, loc="left")
    return fig


def ttft_tpot_figure(run: Run) -> Figure:
    """TTFT above TPOT: a group of bars per shape, a bar per combo; p50 with whiskers from p5 to p95.

    One panel per metric, each the width of the page (side by side they were shrunk until their
    labels were about 7 pixels high)."""
    recs = ok_records(run)
    all_recs = run.records()
    combos = list(dict.fromkeys(combo_label(r.cell) for r in all_recs))
    shapes = sorted(
        {(r.cell.batch_size, r.cell.sequence_length, r.cell.num_tokens_to_generate) for r in all_recs}
    )
    by_slot = {(combo_label(r.cell), shape_label(r.cell)): r for r in all_recs}
    slots = len(combos) + 1  # a gap between groups
    total = len(shapes)
    shapes = shapes[: max(1, MAX_CELLS // 2 // slots)]  # a figure stays readable (and renders in seconds)
    rows = len(shapes) * slots
    panel = 0.9 + BAR_IN * max(rows, 6)
    fig = new_figure(WIDTH_IN, 1.4 + 2 * panel)
    what = "TTFT and TPOT per shape and combo (bar: p50, whiskers: p5 to p95)"
    if total > len(shapes):
        what += f": the first {len(shapes)} of {total} shapes"
    fig.suptitle(_title(run, what), fontsize=10, x=0.01, ha="left")
    if not recs:
        return _empty(fig, "no measured cell")
    axes = fig.subplots(2, 1)
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
                p = percentiles(rec, metric) if rec.ok else None
                if p is None:
                    # Not measured, or no such metric (one generated token has no TPOT): say so, draw nothing.
                    why = rec.status if not rec.ok else "n/a"
                    ax.text(
                        0.005,
                        y,
                        mpl_text(why),
                        transform=ax.get_yaxis_transform(),
                        fontsize=8,
                        color="#888888",
                        va="center",
                    )
                    continue
                p5, p50, p95 = _whiskers(p)
                ax.barh(y, p50, height=0.8, color=colors[combo])
                ax.errorbar(
                    p50,
                    y,
                    xerr=[[p50 - p5], [p95 - p50]],
                    fmt="none",
                    ecolor="#222222",
                    elinewidth=0.8,
                    capsize=2,
                )
                drawn.add(combo)
                lows.append(p5)
                highs.append(p95)
        if lows:
            if _log_if_wide(ax, "x", min(lows), max(highs)):
                label = label.replace("(ms)", "(ms, log scale)")
        else:
            ax.text(0.5, 0.5, f"no cell measured {metric.upper()}", transform=ax.transAxes, ha="center")
        ax.set_xlabel(label, fontsize=10)
        ax.tick_params(axis="x", labelsize=LABEL_PT)
        ax.grid(axis="x", alpha=0.3, which="both")
        ax.set_axisbelow(True)
        centers = [g * slots + (len(combos) - 1) / 2 for g in range(len(shapes))]
        ax.set_yticks(centers, labels=labels, fontsize=LABEL_PT)
        ax.set_ylim(rows - 0.5, -1.0)
    _combo_legend(fig, colors, drawn)
    return fig


def throughput_figure(run: Run) -> Figure:
    """e2e throughput against batch size: a line per combo and shape; p50, whiskers p5 to p95."""
    recs = ok_records(run)
    fig = new_figure(WIDTH_IN, 6.5)
    what = "End-to-end throughput against batch size (p50, whiskers p5 to p95)"
    if not recs:
        fig.suptitle(_title(run, what))
        return _empty(fig, "no measured cell")
    seqs = {r.cell.sequence_length for r in recs}
    news = {r.cell.num_tokens_to_generate for r in recs}
    lines: dict[tuple[str, Any, Any], list[tuple[int, dict[str, float]]]] = {}
    for r in recs:
        p = percentiles(r, "e2e_throughput")
        if p is None:
            continue
        cell = r.cell
        key = (combo_label(cell), cell.sequence_length, cell.num_tokens_to_generate)
        lines.setdefault(key, []).append((cell.batch_size, p))
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
            label=mpl_text(" ".join(parts)),
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
        ax.legend(fontsize=LABEL_PT, title=title, title_fontsize=LABEL_PT, loc="best")
    else:  # many lines: beside the plot, not over it
        handles, names = ax.get_legend_handles_labels()
        fig.legend(
            handles,
            names,
            fontsize=LABEL_PT,
            title=title,
            title_fontsize=LABEL_PT,
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


# ------------------------------------------------------------------------------------- writing


def file_name(name: str) -> str:
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
        path = out / f"{file_name(name)}.png"
        path.write_bytes(png_bytes(fig))
        paths.append(path)
    return paths
