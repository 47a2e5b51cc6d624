"""Self-contained HTML reports of a run and of a comparison: a summary table and the figures
embedded as PNG data URIs; nothing to fetch (no external script, stylesheet, font or image). The
comparison's table sorts by a click on a header, by a few lines of script inside the page."""

from __future__ import annotations

import base64
import html
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.analysis.compare import (
    COMPARED_METRICS,
    DEFAULT_ALPHA,
    IMPROVEMENT,
    INCONCLUSIVE,
    LABELS,
    NOT_TESTED,
    REGRESSION,
    VERDICT_ORDER,
    CellComparison,
    Comparison,
    compare_runs,
)
from bench.errors import UserError
from bench.output.compare import (
    DETAIL_HEADERS,
    MARK,
    detail_rows,
    fmt_pct,
    fmt_ratio,
    headline,
    method_note,
    metric_columns,
)
from bench.output.compare_plots import compare_figures, distribution_figures, distribution_name
from bench.output.plots import (
    file_name,
    ok_records,
    percentiles,
    png_bytes,
    render,
    run_figures,
    write_png,
)
from bench.output.tables import fmt_bytes, fmt_rate
from bench.plan.matrix import Cell
from bench.results.records import CellRecord
from bench.results.store import Run, open_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
.skipped, .unchanged, .not-run { color: #777; } .interrupted, .inconclusive, .flagged { color: #b26a00; }
td.regression, td.improvement { font-weight: bold; }
.meta { color: #555; } .warning { color: #b26a00; } .empty { color: #777; font-style: italic; }
.wide { overflow-x: auto; max-width: 100%; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
h3 { font-size: 1em; margin: 1.2em 0 0.3em; font-weight: normal; }
td a, h3 a { color: inherit; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
"""

# Sorts a table.sortable by the clicked header's column (again: the other way). A cell's
# data-sort, where it has one, is its sort key (a ratio, a verdict's rank; empty sorts last).
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var key = function (tr) {
        var td = tr.cells[col];
        return td.hasAttribute("data-sort") ? td.getAttribute("data-sort") : td.textContent.trim();
      };
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var c = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
        return up ? c : -c;
      });
      rows.forEach(function (tr) { body.appendChild(tr); });
    });
  });
});
"""


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _cls(text: Any) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", str(text).lower()).strip("-")


def _table(headers: list[str], rows: list[str], sortable: bool = False) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)  # headers are built here: already HTML
    table = '<table class="sortable">' if sortable else "<table>"
    # A wide table scrolls inside its box; the page keeps its width (and the figures their scale).
    return (
        f'<div class="wide">{table}\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody>\n</table></div>"
    )


def write_html(
    title: str,
    summary_html: str,
    figures: Mapping[str, Figure | bytes],
    path: str | os.PathLike[str],
    captions: Mapping[str, str] | None = None,
) -> Path:
    """One self-contained HTML file: the title (escaped), the summary (an HTML fragment as
    run_summary_html / compare_summary_html build it, with its text escaped) and the figures as
    base64 PNG data URIs, each with the id file_name(name) and its caption (captions, else the
    name). No external asset: no script, stylesheet, font or image to fetch; a summary with a
    sortable table gets SORT_SCRIPT inline."""
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
        caption = (captions or {}).get(name, name)
        parts.append(
            f'<figure id="{_e(file_name(name))}"><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    if 'class="sortable"' in summary_html:
        parts.append(f"<script>{SORT_SCRIPT}</script>")
    parts += ["</body>", "</html>", ""]
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _ms(p: dict[str, float] | None, key: str) -> str:
    return "-" if p is None else f"{p[key] * 1e3:.2f}"


def _rate(record: CellRecord, metric: str) -> str:
    p = percentiles(record, metric)
    return fmt_rate(p["p50"] if p else None)


def _setting(run: Run, key: str) -> Any:
    """A measurement setting of the run: as measured (run identity), else as configured, else as
    the records carry it; None where none says."""
    for source in (
        (run.meta.identity or {}).get("settings") or {},
        run.meta.config,
        *(r.settings or {} for r in run.records()),
    ):
        if isinstance(source, dict) and source.get(key) is not None:
            return source[key]
    return None


def _axis(run: Run, key: str) -> str | None:
    """The values of a shape axis (sequence_length, ...): from the config, else from the cells."""
    given = run.meta.config.get(key)
    values = given if isinstance(given, list) else [given] if given is not None else []
    if not values:
        values = sorted({getattr(r.cell, key) for r in run.records()})
    return ", ".join(str(v) for v in values) or None


def _measured_html(run: Run) -> str:
    """How the numbers were measured: the shapes, the iterations and the machine's cores."""
    warmup, timed = _setting(run, "warmup_iterations"), _setting(run, "measurement_iterations")
    processes = _setting(run, "processes") or max((r.process_count for r in ok_records(run)), default=None)
    env = run.meta.environment
    iterations = None
    if timed is not None:
        iterations = f"{timed} timed runs per cell"
        if processes:
            iterations += f" in {processes} worker process{'es' if processes != 1 else ''}"
        if warmup is not None:
            iterations += f", each after {warmup} warm-up run{'s' if warmup != 1 else ''}"
    items = [
        ("sequence length", _axis(run, "sequence_length")),
        ("tokens generated", _axis(run, "num_tokens_to_generate")),
        ("batch size", _axis(run, "batch_size")),
        ("iterations", iterations),
        ("CPU cores", env.cpu_count if env is not None else None),
    ]
    return '<p class="meta">' + " · ".join(f"{_e(k)}: <b>{_e(v)}</b>" for k, v in items if v) + "</p>"


def _run_meta_html(run: Run) -> str:
    meta = run.meta
    cfg = meta.config
    pkgs = meta.packages()
    items = [
        ("run id", run.run_id),
        ("status", meta.status),
        ("hardware", meta.hardware),
        ("model", cfg.get("model")),
        ("dtype", cfg.get("dtype")),
        ("started", meta.started_at),
        ("finished", meta.finished_at),
        ("measured commit", meta.commit_sha),
        *((k, pkgs.get(k)) for k in ("torch", "transformers", "tfbench") if pkgs.get(k)),
    ]
    what = '<p class="meta">' + " · ".join(f"{_e(k)}: <b>{_e(v)}</b>" for k, v in items if v) + "</p>"
    return what + "\n" + _measured_html(run)


@dataclass(frozen=True)
class _Row:
    """One line of the run's cell table: a record, or a planned cell without one."""

    index: int
    cell_id: str
    name: str  # says the shape too: "sdpa, no compile, b1 s128 n32"
    status: str
    reason: str
    record: CellRecord | None = None


def _rows(run: Run) -> list[_Row]:
    rows = [_Row(r.cell.index, r.cell_id, r.name, r.status, _reason(r), r) for r in run.records()]
    for cell in run.meta.planned_cells():  # a run that stopped early: planned cells without a record
        cid = cell.get("cell_id")
        if isinstance(cid, str) and cid not in run.cells:
            spec = Cell.from_dict(cell)
            why = "no record: the run ended before this cell"
            rows.append(_Row(spec.index, cid, spec.name, "not run", why))
    return sorted(rows, key=lambda r: (r.index, r.cell_id))


def _reason(r: CellRecord) -> str:
    if r.reason:
        return r.reason
    return r.error.message or "" if r.error is not None else ""


def run_summary_html(run: Run) -> str:
    """The run's summary as an HTML fragment: what ran where, every cell, and the unmeasured ones with reasons."""
    every = _rows(run)
    counts = Counter(r.status for r in every)
    parts = [_run_meta_html(run)]
    parts.append(
        "<p>"
        + _e(
            f"{len(every)} cells: "
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda x: -x[1]))
        )
        + "</p>"
    )
    if not ok_records(run):
        parts.append('<p class="empty">No cell of this run was measured (status ok): nothing to plot.</p>')
    headers = ["#", "cell", "status"]
    headers += [
        f"{h}<br><small>ms</small>"
        for h in ("e2e p50", "e2e p95", "ttft p50", "tpot p50", "itl p50", "itl p95")
    ]
    headers += [f"{h}<br><small>tok/s p50</small>" for h in ("e2e", "decode", "prefill")]
    headers += ["peak mem", "n", "cell id"]
    rows = []
    for row in every:
        r = row.record
        if r is not None and r.ok:
            e2e = percentiles(r, "e2e_latency")
            nums = [
                _ms(e2e, "p50"),
                _ms(e2e, "p95"),
                _ms(percentiles(r, "ttft"), "p50"),
                _ms(percentiles(r, "tpot"), "p50"),
                _ms(percentiles(r, "itl"), "p50"),
                _ms(percentiles(r, "itl"), "p95"),
                *(_rate(r, m) for m in ("e2e_throughput", "decode_throughput", "prefill_throughput")),
                fmt_bytes(r.peak_memory_bytes),
                str(len(r.pooled("e2e_latency")) or (e2e or {}).get("n", 0)),
            ]
        else:
            nums = ["-"] * 12
        rows.append(
            f"<tr><td class=num>{_e(row.index)}</td><td class=name>{_e(row.name)}</td>"
            f"<td class={_cls(row.status)}>{_e(row.status)}</td>"
            + "".join(f"<td class=num>{_e(v)}</td>" for v in nums)
            + f"<td class=id>{_e(row.cell_id[:8])}</td></tr>"
        )
    parts += ["<h2>Cells</h2>", _table(headers, rows), *_profiles_html(run)]
    unmeasured = [r for r in every if r.status != "ok"]
    if unmeasured:
        rows = [
            f"<tr><td class=name>{_e(r.name)}</td>"
            f"<td class={_cls(r.status)}>{_e(r.status)}</td>"
            f"<td>{_e(r.reason)}</td>"
            f"<td class=id>{_e(r.cell_id[:8])}</td></tr>"
            for r in unmeasured
        ]
        parts += [
            f"<h2>Cells without measurements ({len(unmeasured)})</h2>",
            _table(["cell", "status", "reason", "cell id"], rows),
        ]
    return "\n".join(parts)


def _profiles_html(run: Run) -> list[str]:
    """Each profiled cell's top operators, linked to its trace (a file: URL, beside the run)."""
    parts = []
    for r in sorted(run.records(), key=lambda r: r.cell.index):
        prof = r.profile
        if prof is None:
            continue
        if not prof.available or not prof.trace:
            parts.append(f"<p>{_e(r.name)}: no trace, {_e(prof.reason)}</p>")
            continue
        url = (Path(run.path).resolve() / prof.trace).as_uri()
        shares = ", ".join(f"{k} {v:.0%}" for k, v in prof.shares.items() if v is not None)
        parts.append(
            f"<p>{_e(r.name)}: {_e(prof.new_tokens)} new tokens, {_e(prof.time)} self time; {_e(shares)}; "
            f'<a href="{_e(url)}">trace</a> ({_e(fmt_bytes(prof.trace_bytes))})</p>'
        )
        rows = [
            f"<tr><td class=name>{_e(op.name)}</td><td class=num>{op.calls}</td>"
            f"<td class=num>{op.self_time_us / 1e3:.3f}</td><td class=num>{(op.share or 0):.1%}</td>"
            f"<td>{_e(op.family)}</td></tr>"
            for op in prof.top_ops
        ]
        parts.append(_table(["operator", "calls", "self ms", "share", "family"], rows))
    return ["<h2>Profiles</h2>", *parts] if parts else []


DETAIL_LIMIT = 200  # changed and inconclusive cells shown in detail (the JSON output has every one)


def _sort_key(value: float | None) -> str:
    """A table cell's data-sort value: the number, or empty (sorted last) where there is none."""
    return "" if value is None else f"{value:.6g}"


def _compare_details_html(cells: list[CellComparison], plots: Mapping[str, str]) -> list[str]:
    """Per changed or inconclusive cell: each metric's BASE and NEW with units, the ratio with its
    interval, p, the MDE and n per side (the markdown's detail rows), and a link to its samples."""
    parts = []
    for c in cells[:DETAIL_LIMIT]:
        link = f' · <a href="#{_e(plots[c.cell_id])}">samples per process</a>' if c.cell_id in plots else ""
        parts.append(
            f'<h3 id="detail-{_e(c.cell_id)}"><code>{_e(c.name)}</code> ({_e(c.cell_id[:8])}): '
            f"<span class={_cls(c.verdict)}>{_e(MARK.get(c.verdict, ''))} {_e(c.verdict)}</span>{link}</h3>"
        )
        keys = [k for k in COMPARED_METRICS if k in c.metrics]
        rows = []
        for key, row in zip(keys, detail_rows(c)):
            m = c.metrics[key]
            cls = _cls(m.verdict) + (" flagged" if m.verdict == NOT_TESTED and m.beyond_threshold else "")
            rows.append(
                f'<tr><td>{_e(row[0])}</td><td class="{cls}">{_e(row[1])}</td>'
                + "".join(f"<td class=num>{_e(v)}</td>" for v in row[2:])
                + "</tr>"
            )
        parts.append(_table([_e(h) for h in DETAIL_HEADERS], rows))
        notes: dict[str, list[str]] = {}  # a note shared by several metrics, said once
        for k, m in c.metrics.items():
            if m.note and m.verdict != NOT_TESTED:
                notes.setdefault(m.note, []).append(LABELS[k])
        if notes:
            text = "; ".join(f"{', '.join(labels)}: {note}" for note, labels in notes.items())
            parts.append(f'<p class="meta">{_e(text)}</p>')
    if len(cells) > DETAIL_LIMIT:
        parts.append(f'<p class="meta">{len(cells) - DETAIL_LIMIT} more not shown (see the JSON output).</p>')
    return parts


def compare_summary_html(cmp: Comparison, plots: Mapping[str, str] | None = None) -> str:
    """The comparison as an HTML fragment: headline, warnings, a sortable table of the ratios per
    cell and metric, the changed and inconclusive cells in detail, the cells not compared.

    plots: cell id -> the id of its distribution figure on the page; each row links to it."""
    plots = plots or {}

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
    columns = metric_columns(cmp)
    detailed = [c for c in cmp.cells if c.verdict in (REGRESSION, IMPROVEMENT, INCONCLUSIVE)]
    shown = {c.cell_id for c in detailed[:DETAIL_LIMIT]}
    if cmp.cells:
        headers = ["cell", "verdict", "MDE", *(_e(LABELS[m]) for m in columns), "cell id"]
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
                key = _sort_key(mc.ratio if mc is not None else None)
                ratio, _, interval = fmt_ratio(mc).partition(" [")  # the interval on a line of its own
                text = _e(ratio) + (f"<br><small>[{_e(interval)}</small>" if interval else "")
                tds.append(f'<td class="{cls}" data-sort="{key}"{title}>{text}</td>')
            name = _e(c.name)
            if c.cell_id in plots:
                name = f'<a href="#{_e(plots[c.cell_id])}">{name}</a>'
            verdict = _e(c.verdict)
            if c.cell_id in shown:
                verdict = f'<a href="#detail-{_e(c.cell_id)}">{verdict}</a>'
            rows.append(
                f"<tr><td class=name>{name}</td>"
                f'<td class={_cls(c.verdict)} data-sort="{VERDICT_ORDER.get(c.verdict, 9)}">{verdict}</td>'
                f'<td class=num data-sort="{_sort_key(c.mde)}">{_e(fmt_pct(c.mde))}</td>'
                + "".join(tds)
                + f"<td class=id>{_e(c.cell_id[:8])}</td></tr>"
            )
        parts += [
            f"<h2>Compared cells ({len(cmp.cells)})</h2>",
            '<p class="meta">Click a column header to sort by it; a cell name links to its samples'
            + (f" (drawn for the {len(plots)} most notable cells)" if 0 < len(plots) < len(cmp.cells) else "")
            + ", a verdict to its details.</p>",
            _table(headers, rows, sortable=True),
        ]
    if detailed:
        parts.append(f"<h2>Changed and inconclusive cells ({len(detailed)})</h2>")
        parts += _compare_details_html(detailed, plots)
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
    parts.append(f'<p class="meta">{_e(method_note(cmp))} Method: {_e(cmp.method)}.</p>')
    return "\n".join(parts)


def _write(
    title: str,
    summary: str,
    figures: Mapping[str, Figure],
    html_path: Any,
    png_dir: Any,
    captions: Mapping[str, str] | None = None,
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
            written.append(write_html(title, summary, pngs, html_path, captions))
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
    return write_run_report(open_run(run_dir), html, png_dir)


def write_compare_report(
    cmp: Comparison,
    html: str | os.PathLike[str] | None,
    png_dir: str | os.PathLike[str] | None,
    base: Run | None = None,
    new: Run | None = None,
) -> list[Path]:
    """A comparison's figures as PNGs and/or its HTML report; the paths written. The figures: the
    ratios (one per metric) and, given the two runs compared, the samples of the most notable
    cells (one per cell, dist_<cell id>), which the table's rows link to."""
    figures: dict[str, Figure] = {}
    captions: dict[str, str] = {}
    plots: dict[str, str] = {}
    if html is not None or png_dir is not None:
        figures.update(compare_figures(cmp))
        if base is not None and new is not None:
            dists = distribution_figures(cmp, base, new)
            names = {c.cell_id: c.name for c in cmp.cells}
            for cell_id in names:
                name = distribution_name(cell_id)
                if name in dists:
                    figures[name] = dists[name]
                    captions[name] = f"samples per worker process, BASE and NEW: {names[cell_id]}"
                    plots[cell_id] = file_name(name)
    title = f"tfbench compare {cmp.base['run_id']} -> {cmp.new['run_id']}"
    return _write(title, compare_summary_html(cmp, plots), figures, html, png_dir, captions)


def report_compare(
    base_dir: str | os.PathLike[str],
    new_dir: str | os.PathLike[str],
    html: str | os.PathLike[str] | None = None,
    png_dir: str | os.PathLike[str] | None = None,
    thresholds: dict[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> list[Path]:
    """`tfbench compare BASE NEW --html FILE --png DIR`: compare_runs, then write_compare_report."""
    base, new = open_run(base_dir), open_run(new_dir)
    cmp = compare_runs(base, new, thresholds, alpha)
    return write_compare_report(cmp, html, png_dir, base, new)
