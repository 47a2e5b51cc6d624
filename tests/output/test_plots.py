"""`bench.plots` on run directories written on the spot (tests.test_compare's builders): the figures'
content, valid PNG files, a self-contained and escaped HTML report, unmeasured cells never drawn."""

from __future__ import annotations

import base64
import html
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer
from PIL import Image

from bench.analysis.compare import INCONCLUSIVE, REGRESSION, UNCHANGED, compare_runs
from bench.errors import UserError
from bench.output import compare_plots, plots
from bench.output import html as html_report
from bench.output.compare import DETAIL_HEADERS, fmt_p, fmt_pct, fmt_value
from bench.output.tables import fmt_rate
from bench.results.store import open_run as load_run
from tests.analysis.test_compare import CELLS, ENV, cell_axes, make_run, record, write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPEED = {"eager": 1.3, "sdpa": 1.0, "flash_attention_2": 0.85, "flex_attention": 0.95}
SCRIPT_NAME = "sdpa, no compile <script>alert(1)</script>, b1 s128 n32"


def matrix_run(
    path: Path,
    seed: int = 0,
    *,
    attns: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2"),
    compiles: tuple[str | None, ...] = (None, "default"),
    batches: tuple[int, ...] = (1, 4, 16),
    seqs: tuple[int, ...] = (128, 1024),
    cb: bool = False,
    not_ok: dict[int, tuple[str, str]] | None = None,
    names: dict[int, str] | None = None,
    runs: int = 5,
    tpot_factor: dict[int, float] | None = None,
) -> Path:
    """A run over attention implementations x compile modes x batch sizes x sequence lengths, with
    latencies that grow with the shape; `not_ok` maps a cell index to (status, reason)."""
    rng = np.random.default_rng(seed)
    recs = []
    combos = [(a, c, False) for a in attns for c in compiles] + ([("sdpa", None, True)] if cb else [])
    for attn, mode, is_cb in combos:
        for b in batches:
            for s in seqs:
                axes = cell_axes(len(recs), attn, b, is_cb, compile_mode=mode, seq=s)
                i = axes["index"]
                if names and i in names:
                    axes["name"] = names[i]
                speed = SPEED[attn] * (0.7 if mode else 1.0)
                status, reason = (not_ok or {}).get(i, ("ok", None))
                recs.append(
                    record(
                        axes,
                        rng,
                        n=runs,
                        ttft=(0.004 + 2e-6 * b * s) * speed,
                        tpot=(0.008 + 0.0004 * b) * speed,
                        tpot_factor=(tpot_factor or {}).get(i, 1.0),
                        status=status,
                        reason=reason,
                    )
                )
    return write_run(path, recs)


def check_png(path: Path, min_bytes: int = 10_000) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
    assert width >= 600 and height >= 300, (path, img.size)
    return width, height


def tick_labels(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels()]


def test_import_does_not_load_matplotlib():
    code = "import sys, bench.output.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_run_report_writes_valid_pngs_and_a_self_contained_html(tmp_path):
    run_dir = matrix_run(
        tmp_path / "run-1",
        not_ok={
            3: ("failed", "RuntimeError: CUDA error: an illegal memory access <&> was encountered"),
            7: ("oom", "CUDA out of memory. Tried to allocate 2.00 GiB"),
            12: ("skipped", "flash_attention_2 needs the flash-attn package"),
        },
        names={0: SCRIPT_NAME},
        cb=True,
    )
    html_path = tmp_path / "out" / "report.html"
    written = html_report.report_run(run_dir, html=html_path, png_dir=tmp_path / "png")
    assert [p.name for p in written] == ["latency.png", "ttft_tpot.png", "throughput.png", "report.html"]
    for png in written[:3]:
        check_png(png)

    text = html_path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 3
    for data in images:
        assert base64.b64decode(data)[:8] == PNG_MAGIC
    # Self-contained: nothing fetched from anywhere (no http(s) at all, no script, link or external src).
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<(script|link|iframe)\b", text, re.IGNORECASE)
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', text))
    # The hostile cell name is escaped wherever it appears.
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # Unmeasured cells are listed with their reasons (escaped too).
    section = text.split("Cells without measurements (3)")[1]
    assert "an illegal memory access &lt;&amp;&gt; was encountered" in section
    assert "CUDA out of memory. Tried to allocate 2.00 GiB" in section
    assert "flash_attention_2 needs the flash-attn package" in section
    for status in ("failed", "oom", "skipped"):
        assert f"<td class={status}>{status}</td>" in section
    assert "NVIDIA H100 80GB HBM3" in text and "run-1" in text


def test_figures_show_measured_cells_only(tmp_path):
    not_ok = {1: ("failed", "boom"), 4: ("timeout", "no result after 600 s")}
    run = load_run(matrix_run(tmp_path / "r", not_ok=not_ok, names={0: SCRIPT_NAME}))
    ok = [r for r in run.records() if r.ok]
    figures = plots.run_figures(run)
    assert list(figures) == ["latency", "ttft_tpot", "throughput"]

    # latency: one bar per ok cell, in cell order, named by cell name, p50 in ms; no zero bars.
    ax = figures["latency"].axes[0]
    assert tick_labels(ax) == [r.name for r in ok]
    bars = ax.patches
    widths = [b.get_width() for b in bars]
    expected = [np.percentile([x.e2e_latency for x in r.runs], 50) * 1e3 for r in ok]
    assert widths == pytest.approx(expected)
    assert min(widths) > 0
    title = ax.get_title(loc="left")
    assert "r ·" in title and "NVIDIA H100 80GB HBM3" in title and "(ms)" in ax.get_xlabel()

    # ttft_tpot: two panels, the shapes on the y axis, a bar per measured (combo, shape); the
    # unmeasured cells are a status text, not a bar.
    left, right = figures["ttft_tpot"].axes[:2]
    assert "TTFT" in left.get_xlabel() and "TPOT" in right.get_xlabel() and "(ms)" in right.get_xlabel()
    assert tick_labels(left) == [f"b{b} s{s} n32" for b in (1, 4, 16) for s in (128, 1024)]
    for ax in (left, right):
        heights = [p.get_width() for p in ax.patches]
        assert len(heights) == len(ok) and min(heights) > 0
        assert {"failed", "timeout"} <= {t.get_text() for t in ax.texts}
    legend = figures["ttft_tpot"].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "eager, no compile",
        "eager, compile default",
        "sdpa, no compile",
        "sdpa, compile default",
        "flash_attention_2, no compile",
        "flash_attention_2, compile default",
    ]

    # throughput: a line per combo and sequence length against batch size, in tokens/s.
    ax = figures["throughput"].axes[0]
    assert "tokens/s" in ax.get_ylabel() and "batch size" in ax.get_xlabel()
    lines = {c.get_label(): c.lines[0] for c in ax.containers}  # an errorbar container per line
    assert len(lines) == 6 * 2
    sdpa = lines["sdpa, no compile s128"]
    assert list(sdpa.get_xdata()) == [1, 4, 16]
    assert np.all(np.diff(sdpa.get_ydata()) > 0)  # more tokens/s at larger batches
    # eager b1 s1024 (index 1) failed: its line has the other two batch sizes only.
    assert list(lines["eager, no compile s1024"].get_xdata()) == [4, 16]


def test_run_report_says_how_it_was_measured(tmp_path):
    """The header: shapes, iterations (warm-up, timed, processes) and the cores; the table: itl and
    the decode and prefill throughputs besides e2e, as the records hold them."""
    run = load_run(matrix_run(tmp_path / "r", attns=("sdpa",), batches=(1, 4), runs=8))
    text = html_report.run_summary_html(run)
    meta = text.split("<h2>Cells</h2>")[0]
    assert "sequence length: <b>128, 1024</b>" in meta and "tokens generated: <b>32</b>" in meta
    assert "batch size: <b>1, 4</b>" in meta
    # run.json's settings (20 timed runs, 2 warm-up); the processes as the records have them.
    assert (
        "iterations: <b>20 timed runs per cell in 4 worker processes, each after 2 warm-up runs</b>" in meta
    )
    assert "CPU cores: <b>16</b>" in meta
    head = text.split("<thead>")[1].split("</thead>")[0]
    for header in ("itl p50<br><small>ms", "itl p95<br><small>ms", "decode<br><small>tok/s p50"):
        assert header in head, header
    assert "prefill<br><small>tok/s p50" in head and "<th>shape</th>" not in head
    rec = run.records()[0]
    row = next(line for line in text.splitlines() if f">{rec.name}<" in line)
    values = re.findall(r"<td class=num>([^<]*)</td>", row)[1:]  # after the index
    assert values[4:6] == [f"{rec.stat('itl', q) * 1e3:.2f}" for q in ("p50", "p95")]
    assert values[6:9] == [
        fmt_rate(rec.stat(m, "p50")) for m in ("e2e_throughput", "decode_throughput", "prefill_throughput")
    ]


def test_whiskers_reach_from_p5_to_p95(tmp_path):
    run = load_run(matrix_run(tmp_path / "r", attns=("eager", "sdpa"), batches=(1, 4), seqs=(128,), runs=12))
    recs = run.records()

    def whiskers(ax: Any) -> list[tuple[float, float]]:
        found = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        segments = [seg for c in found for seg in c.lines[2][0].get_segments()]
        return [(seg[0][0], seg[1][0]) for seg in segments]

    ax = plots.latency_figure(run).axes[0]
    expected = [plots.percentiles(r, "e2e_latency") for r in recs]
    got = whiskers(ax)
    assert np.allclose(got, [(p["p5"] * 1e3, p["p95"] * 1e3) for p in expected])
    assert all(low < p["p50"] * 1e3 for (low, _), p in zip(got, expected))  # a lower end, not only p95

    fig = plots.ttft_tpot_figure(run)
    top, bottom = fig.axes[:2]
    for ax, metric in ((top, "ttft"), (bottom, "tpot")):
        lows = sorted(low for low, _ in whiskers(ax))
        assert lows == pytest.approx(sorted(plots.percentiles(r, metric)["p5"] * 1e3 for r in recs))


def test_ttft_tpot_labels_stay_readable(tmp_path):
    """TTFT above TPOT, each as wide as the other figures: at the page's width (the figure scaled
    to about 1,000 pixels) a 9-point label is about 11 pixels high (it was 7 side by side)."""
    run = load_run(matrix_run(tmp_path / "r"))
    fig = plots.ttft_tpot_figure(run)
    top, bottom = fig.axes[:2]
    assert fig.get_size_inches()[0] == plots.WIDTH_IN == plots.latency_figure(run).get_size_inches()[0]
    fig.canvas.draw()
    assert top.get_position().y0 > bottom.get_position().y1  # stacked, not side by side
    for ax in (top, bottom):
        assert tick_labels(ax) == [f"b{b} s{s} n32" for b in (1, 4, 16) for s in (128, 1024)]
        size = ax.get_yticklabels()[0].get_fontsize()
        pixels = size / 72 * plots.DPI * 1000 / (plots.WIDTH_IN * plots.DPI)
        assert pixels >= 10, pixels
    assert "TTFT" in top.get_xlabel() and "TPOT" in bottom.get_xlabel()


def test_eighty_cells_stay_readable(tmp_path):
    run = load_run(
        matrix_run(
            tmp_path / "big",
            attns=("eager", "sdpa", "flash_attention_2", "flex_attention"),
            batches=(1, 2, 4, 8, 16),
            seqs=(128, 1024),
            runs=3,
        )
    )
    assert len(run.cells) == 80
    fig = plots.latency_figure(run)
    ax = fig.axes[0]
    assert len(tick_labels(ax)) == 80
    width, height = fig.get_size_inches()
    assert height >= 80 * 0.2  # a row per cell, not squeezed
    assert ax.get_yticklabels()[0].get_fontsize() >= 8
    path = plots.write_png({"latency": fig}, tmp_path / "png")[0]
    check_png(path)


def test_run_without_a_measured_cell_still_reports(tmp_path):
    rng = np.random.default_rng(0)
    recs = [
        record(CELLS[0], rng, status="failed", reason="ImportError: no module named flash_attn"),
        record(CELLS[1], rng, status="oom", reason="CUDA out of memory"),
    ]
    run_dir = write_run(tmp_path / "bad", recs, status="finished")
    run = load_run(run_dir)
    assert plots.run_figures(run) == {}
    written = html_report.report_run(run_dir, html=tmp_path / "bad.html", png_dir=tmp_path / "png")
    assert written == [tmp_path / "bad.html"]
    assert not list((tmp_path / "png").glob("*.png"))
    text = (tmp_path / "bad.html").read_text()
    assert "No cell of this run was measured" in text and "No figures" in text
    assert "ImportError: no module named flash_attn" in text and "CUDA out of memory" in text
    assert "data:image/png" not in text


def test_planned_cells_without_a_record_are_listed(tmp_path):
    run_dir = make_run(tmp_path / "r", seed=0, n=3)
    run = load_run(run_dir)
    extra = {**CELLS[2], "index": 3, "cell_id": "f" * 16, "name": "sdpa, no compile, b64 s128 n32"}
    run.meta.plan = {"cells": [r.cell.to_dict() for r in run.cells.values()] + [extra]}
    text = html_report.run_summary_html(run)
    assert "4 cells: 3 ok, 1 not run" in text
    assert "sdpa, no compile, b64 s128 n32" in text.split("Cells without measurements (1)")[1]


def test_percentiles_are_the_records_stats(tmp_path):
    run = load_run(matrix_run(tmp_path / "r", batches=(4,), seqs=(128,), cb=True, runs=7))
    for rec in run.cells.values():
        for metric in ("e2e_latency", "ttft", "tpot", "e2e_throughput"):
            p = plots.percentiles(rec, metric)
            assert p["p50"] == pytest.approx(rec.stat(metric, "p50")), (rec.name, metric)
            assert p["p95"] == pytest.approx(rec.stat(metric, "p95"))
    # Without raw runs: the stats; without either: None (nothing is drawn).
    rec = next(iter(run.cells.values()))
    bare = rec.with_updates(runs=[])
    assert plots.percentiles(bare, "tpot")["p50"] == rec.stat("tpot", "p50")
    assert plots.percentiles(bare.with_updates(stats={}), "tpot") is None


@pytest.fixture
def regression(tmp_path):
    """Cell 1's tpot 10% slower in NEW (tests.test_compare's fixture), and one cell failed in NEW."""
    base = make_run(tmp_path / "base", seed=1)
    new = make_run(
        tmp_path / "new",
        seed=2,
        changes={1: {"tpot_factor": 1.10}, 2: {"status": "oom", "reason": "CUDA out of memory <b64>"}},
    )
    return base, new


def test_compare_figure_marks_the_regression(regression):
    base, new = regression
    cmp = compare_runs(load_run(base), load_run(new))
    slow = CELLS[1]["name"]
    points = compare_plots.compare_points(cmp, "tpot")
    assert [p["name"] for p in points] == [CELLS[0]["name"], slow]  # cell 2 is not compared
    by_name = {p["name"]: p for p in points}
    assert by_name[slow]["verdict"] == REGRESSION and by_name[slow]["color"] == "#d62728"
    assert (
        by_name[CELLS[0]["name"]]["verdict"] == UNCHANGED and by_name[CELLS[0]["name"]]["color"] == "#7f7f7f"
    )
    assert 1.08 < by_name[slow]["ratio"] < 1.12 and by_name[slow]["ci_low"] > 1

    fig = compare_plots.compare_figure(cmp, "tpot")
    ax = fig.axes[0]
    labels = tick_labels(ax)
    assert labels == [CELLS[0]["name"], slow]
    containers = {c.get_label(): c for c in ax.containers}
    assert set(containers) == {REGRESSION, UNCHANGED}
    marker = containers[REGRESSION].lines[0]
    assert to_hex(marker.get_color()) == "#d62728"
    assert list(marker.get_ydata()) == [labels.index(slow)]
    assert marker.get_xdata()[0] == pytest.approx(by_name[slow]["ratio"])
    assert to_hex(containers[UNCHANGED].lines[0].get_color()) == "#7f7f7f"
    # The interval is drawn: the whisker spans ci_low..ci_high.
    segments = containers[REGRESSION].lines[2][0].get_segments()
    assert segments[0][0][0] == pytest.approx(by_name[slow]["ci_low"])
    assert segments[0][1][0] == pytest.approx(by_name[slow]["ci_high"])
    # A line at 1 and the 5% band.
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.get_lines())
    band = next(p for p in ax.patches if "threshold" in p.get_label())
    assert band.get_x() == pytest.approx(1 / 1.05) and band.get_x() + band.get_width() == pytest.approx(1.05)
    assert "base -> new" in ax.get_title(loc="left")

    # Throughputs fall with it; below 1 is the regression there.
    tput = {p["name"]: p for p in compare_plots.compare_points(cmp, "decode_throughput")}
    assert tput[slow]["verdict"] == REGRESSION and tput[slow]["ratio"] < 1
    with pytest.raises(UserError, match="unknown metric 'latency'"):
        compare_plots.compare_figure(cmp, "latency")


def test_compare_report(regression, tmp_path, monkeypatch):
    base, new = regression
    written = html_report.report_compare(base, new, html=tmp_path / "cmp.html", png_dir=tmp_path / "png")
    names = [p.name for p in written]
    assert names[-1] == "cmp.html"
    assert "compare_tpot.png" in names and "compare_peak_memory_bytes.png" in names
    for png in written[:-1]:
        check_png(png, min_bytes=5_000)
    text = (tmp_path / "cmp.html").read_text()
    assert "1 regression, 0 improvements, 1 unchanged, 1 not compared" in text
    assert text.count("data:image/png;base64,") == len(written) - 1
    assert "http://" not in text and "https://" not in text
    row = next(line for line in text.splitlines() if CELLS[1]["name"] in line and "<tr>" in line)
    cell_id = CELLS[1]["cell_id"]
    assert f'<td class=regression data-sort="0"><a href="#detail-{cell_id}">regression</a></td>' in row
    # The row links to its cell's distribution figure, which is on the page.
    assert f'<a href="#dist_{cell_id}">{CELLS[1]["name"]}</a>' in row
    assert f'<figure id="dist_{cell_id}">' in text
    assert f"dist_{cell_id}.png" in names and f"dist_{CELLS[0]['cell_id']}.png" in names
    section = text.split("Cells not compared (1)")[1]
    assert CELLS[2]["name"] in section and "CUDA out of memory &lt;b64&gt;" in section
    assert "<td class=oom>oom</td>" in section

    # The table sorts by a click on its header: a few lines of script inside the page, nothing
    # fetched (no src, no link, no URL).
    assert '<table class="sortable">' in text
    assert text.count("<script>") == 1 and html_report.SORT_SCRIPT in text
    assert not re.search(r"<script[^>]*\bsrc=|<(link|iframe)\b|url\(", text, re.IGNORECASE)
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', text))

    # Only the HTML, with thresholds: a 20% threshold turns the regression into unchanged.
    monkeypatch.setattr(html_report, "compare_figures", lambda cmp: {})  # drawn above already
    written = html_report.report_compare(
        base,
        new,
        html=tmp_path / "loose.html",
        thresholds={"tpot": 0.2, "e2e_latency": 0.2, "decode_throughput": 0.2, "e2e_throughput": 0.2},
    )
    assert written == [tmp_path / "loose.html"]
    assert "0 regressions" in (tmp_path / "loose.html").read_text()


def test_compare_html_details_each_changed_cell(regression):
    """Per changed (and inconclusive) cell: BASE and NEW with units, n per side, p and the MDE,
    the same text as the markdown's detail rows; the unchanged cells are not detailed."""
    base, new = regression
    cmp = compare_runs(load_run(base), load_run(new))
    text = html_report.compare_summary_html(cmp)
    details = text.split("Changed and inconclusive cells (1)")[1].split("Cells not compared")[0]
    slow = next(c for c in cmp.cells if c.verdict == REGRESSION)
    assert f'<h3 id="detail-{slow.cell_id}">' in details
    assert CELLS[0]["name"] not in details  # unchanged
    for header in DETAIL_HEADERS:
        assert f"<th>{html.escape(header)}</th>" in details
    tpot = slow.metrics["tpot"]
    row = next(line for line in details.split("<tr>") if line.startswith("<td>tpot</td>"))
    for value in (
        fmt_value("tpot", tpot.base_value),
        fmt_value("tpot", tpot.new_value),
        fmt_p(tpot.p_value),
        fmt_pct(tpot.mde),
        "4x20 / 4x20",
    ):
        assert f"<td class=num>{html.escape(value)}</td>" in row, value
    assert " ms" in fmt_value("tpot", tpot.base_value)
    # The table has the cell's MDE and sort keys: the ratio itself, the verdict's rank.
    assert f'<td class=num data-sort="{slow.mde:.6g}">{fmt_pct(slow.mde)}</td>' in text
    assert f'data-sort="{tpot.ratio:.6g}"' in text
    # Without distribution figures (a comparison alone) no row links to one.
    assert 'href="#dist_' not in text


def test_inconclusive_cells_are_detailed_with_their_reason(tmp_path):
    cmp = compare_runs(
        load_run(make_run(tmp_path / "b", seed=1, n=3, processes=1)),
        load_run(make_run(tmp_path / "n", seed=2, n=3, processes=1)),
    )
    text = html_report.compare_summary_html(cmp)
    details = text.split("Changed and inconclusive cells (3)")[1]
    assert details.count("<h3 id=") == 3
    assert "<td class=num>1x3 / 1x3</td>" in details
    # A reason shared by every metric is said once per cell, naming the metrics.
    assert details.count("one process on a side") == 3
    assert "e2e, ttft, tpot" in details


def test_distribution_figure_shows_each_process_of_both_sides(regression):
    base, new = (load_run(p) for p in regression)
    cmp = compare_runs(base, new)
    slow = next(c for c in cmp.cells if c.verdict == REGRESSION)
    fig = compare_plots.distribution_figure(slow, base.cells[slow.cell_id], new.cells[slow.cell_id])
    axes = fig.axes
    assert [ax.get_title(loc="left").split(" (ms)")[0] for ax in axes] == ["e2e", "ttft", "tpot"]
    tpot = axes[2]
    assert tick_labels(axes[0]) == [f"{side} p{k}" for side in ("BASE", "NEW") for k in (1, 2, 3, 4)]
    assert "regression" in tpot.get_title(loc="left") and "p <1e-4" in tpot.get_title(loc="left")
    # A scatter per process and side: the process's runs, in ms.
    dots = [c.get_offsets()[:, 0] for c in tpot.collections]
    expected = [
        np.array(v) * 1e3
        for rec in (base.cells[slow.cell_id], new.cells[slow.cell_id])
        for v in rec.process_samples("tpot").values()
    ]
    assert len(dots) == 8 and all(np.allclose(d, e) for d, e in zip(dots, expected))
    # Each side's value (what the ratio compares) as a dashed line.
    dashed = [line.get_xdata()[0] for line in tpot.get_lines() if line.get_linestyle() == "--"]
    assert dashed == pytest.approx(
        [slow.metrics["tpot"].base_value * 1e3, slow.metrics["tpot"].new_value * 1e3]
    )
    path = plots.write_png({"dist": fig}, regression[0].parent / "png")[0]
    check_png(path, min_bytes=5_000)


def test_distribution_figures_are_capped_to_the_most_notable(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_plots, "MAX_DISTRIBUTIONS", 2)
    base = load_run(make_run(tmp_path / "b", seed=1, n=8))
    new = load_run(make_run(tmp_path / "n", seed=2, n=8, changes={2: {"tpot_factor": 1.2}}))
    cmp = compare_runs(base, new)
    figures = compare_plots.distribution_figures(cmp, base, new)
    assert list(figures) == [compare_plots.distribution_name(c.cell_id) for c in cmp.cells[:2]]
    assert cmp.cells[0].cell_id == CELLS[2]["cell_id"]  # the regression first
    written = html_report.write_compare_report(cmp, tmp_path / "cmp.html", None, base, new)
    text = written[0].read_text()
    assert text.count('<td class=name><a href="#dist_') == 2 and "drawn for the 2 most notable cells" in text


def test_inconclusive_is_hollow_and_light(tmp_path):
    # One process a side and no calibration: every metric is inconclusive.
    cmp = compare_runs(
        load_run(make_run(tmp_path / "b", seed=1, n=3, processes=1)),
        load_run(make_run(tmp_path / "n", seed=2, n=3, processes=1)),
    )
    points = compare_plots.compare_points(cmp, "tpot")
    assert {p["verdict"] for p in points} == {INCONCLUSIVE}
    ax = compare_plots.compare_figure(cmp, "tpot").axes[0]
    (container,) = ax.containers
    assert container.get_label() == INCONCLUSIVE
    assert container.lines[0].get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))


def test_hardware_label_is_the_one_of_the_records():
    """The reports label hardware as run identity, Hub rows and history do (results.records)."""
    from bench.results.records import Environment, RunMeta, hardware_label

    assert hardware_label(Environment.model_validate(ENV)) == "1x NVIDIA H100 80GB HBM3"
    gpus = [dict(ENV["gpus"][0], index=i) for i in range(8)]
    assert hardware_label(Environment.model_validate({**ENV, "gpus": gpus})) == "8x NVIDIA H100 80GB HBM3"
    cpu_only = Environment.model_validate({"cpu": "AMD EPYC 7R13", "gpus": []})
    assert hardware_label(cpu_only) == "cpu: AMD EPYC 7R13"
    # A run on the CPU of a GPU machine belongs to the CPU.
    meta = RunMeta.model_validate(
        {"run_id": "r", "environment": ENV, "plan": {"capabilities": {"device": "cpu"}, "cells": []}}
    )
    assert meta.hardware == "cpu: AMD EPYC 7R13"
