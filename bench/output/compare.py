"""A comparison of two runs as people read it: the terminal table, the pull-request markdown and
the JSON document.

Verdicts are told apart by a mark as well as a colour (regression ▲, improvement ▼, inconclusive
?, unchanged =), so that they read the same without colour vision. Each changed or inconclusive
cell shows, per metric, the BASE and NEW values with their units, n per side (processes x timed
runs), the ratio with its interval, the p-value and the minimum detectable effect.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.markup import escape
from rich.table import Table

from bench.analysis.compare import (
    COMPARED_METRICS,
    DEFAULT_THRESHOLD,
    IMPROVEMENT,
    INCONCLUSIVE,
    KEY_METRICS,
    LABELS,
    MEMORY_METRIC,
    NOT_TESTED,
    REGRESSION,
    UNCHANGED,
    CellComparison,
    CellStatus,
    Comparison,
    MetricComparison,
    exit_code,
    short_sha,
)
from bench.output.tables import fmt_bytes, fmt_rate, fmt_seconds
from bench.results.store import finite

MARK = {REGRESSION: "▲", IMPROVEMENT: "▼", INCONCLUSIVE: "?", UNCHANGED: "=", NOT_TESTED: "·"}
VERDICT_STYLE = {REGRESSION: "bold red", IMPROVEMENT: "bold green", INCONCLUSIVE: "yellow", UNCHANGED: "dim"}


def headline(cmp: Comparison) -> str:
    counts = cmp.counts()

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    parts = [
        plural(counts[REGRESSION], "regression"),
        plural(counts[IMPROVEMENT], "improvement"),
        f"{counts[UNCHANGED]} unchanged",
    ]
    if counts[INCONCLUSIVE]:
        parts.append(f"{counts[INCONCLUSIVE]} inconclusive")
    other = counts["only in base"] + counts["only in new"] + counts["not compared"]
    if other:
        parts.append(f"{other} not compared")
    return ", ".join(parts)


def metric_tally(cmp: Comparison, metric: str) -> str:
    """How the cells came out on one metric: '2 regressions, 5 unchanged, 1 inconclusive'."""
    counts: dict[str, int] = {}
    for c in cmp.cells:
        m = c.metrics.get(metric)
        if m is not None:
            counts[m.verdict] = counts.get(m.verdict, 0) + 1
    order = (REGRESSION, IMPROVEMENT, UNCHANGED, INCONCLUSIVE, NOT_TESTED)
    words = {REGRESSION: "regression", IMPROVEMENT: "improvement"}
    parts = []
    for verdict in order:
        n = counts.get(verdict, 0)
        if n:
            word = words.get(verdict)
            parts.append(f"{n} {word}{'' if n == 1 else 's'}" if word else f"{n} {verdict}")
    return ", ".join(parts) or "no cell"


def fmt_value(metric: str, value: float | None) -> str:
    """A metric's value with its unit: seconds as s/ms/µs, rates as tok/s, memory in bytes."""
    if value is None:
        return "-"
    if metric == MEMORY_METRIC:
        return fmt_bytes(value)
    if metric in ("e2e_throughput", "decode_throughput", "prefill_throughput"):
        return f"{fmt_rate(value)} tok/s"
    return fmt_seconds(value)


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def fmt_p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def fmt_ratio(m: MetricComparison | None, markup: str = "plain") -> str:
    """'▲ 1.102 [1.081, 1.124]': the mark, the ratio and its interval; the ratio alone for memory.

    markup: "plain", "markdown" (bold when the metric has a verdict) or "rich" (colours, the interval
    on a second line so that a terminal table stays narrow).
    """
    if m is None or m.ratio is None:
        return "-"
    mark = MARK.get(m.verdict, "")
    if m.verdict == NOT_TESTED and m.beyond_threshold:
        mark = "!"
    ratio = f"{m.ratio:.3f}"
    interval = f"[{m.ci_low:.3f}, {m.ci_high:.3f}]" if m.ci_low is not None and m.ci_high is not None else ""
    if markup == "rich":
        style = VERDICT_STYLE.get(m.verdict, "")
        if m.verdict == NOT_TESTED and m.beyond_threshold:
            style = "yellow"
        text = f"{mark} {ratio}"
        text = f"[{style}]{text}[/{style}]" if style else text
        return text + (f"\n[dim]{escape(interval)}[/dim]" if interval else "")
    text = f"{mark} {ratio} {interval}".strip()
    if markup == "markdown" and m.verdict in (REGRESSION, IMPROVEMENT):
        text = f"**{text}**"
    return text


def metric_columns(cmp: Comparison) -> list[str]:
    """The metrics that appear in at least one compared cell, in table order."""
    present = {m for c in cmp.cells for m in c.metrics}
    return [m for m in COMPARED_METRICS if m in present]


def threshold_text(cmp: Comparison) -> str:
    default = cmp.thresholds.get("e2e_latency", DEFAULT_THRESHOLD)
    special = [f"{LABELS[m]} {t:.1%}".replace(".0%", "%") for m, t in cmp.thresholds.items() if t != default]
    text = f"{default:.1%}".replace(".0%", "%")
    return text + (f" ({', '.join(special)})" if special else "")


def method_note(cmp: Comparison) -> str:
    """What the numbers are and how a verdict is reached, said once."""
    return (
        f"Ratios are NEW/BASE (▲ regression, ▼ improvement, = unchanged, ? inconclusive) with an interval "
        f"at {cmp.alpha:g}/3 (e2e, ttft and tpot are each tested at that level, so that a cell's "
        f"false-alarm rate is {cmp.alpha:g}); a regression or improvement needs significance and a change "
        f"beyond {threshold_text(cmp)}; unchanged needs equivalence (two one-sided tests at {cmp.alpha:g} place the "
        f"change within it). n is processes x "
        f"timed runs; MDE is the change this data finds with 80% power. Latencies: above 1 is slower; "
        f"throughputs: below 1 is slower. Peak memory is one value per cell: its ratio is not tested. "
        f"Run-to-run drift: {cmp.drift}."
    )


def _n(m: MetricComparison) -> tuple[str, str]:
    return f"{m.processes_base}x{m.runs_base}", f"{m.processes_new}x{m.runs_new}"


def detail_rows(c: CellComparison) -> list[list[str]]:
    """One row per metric of a cell: metric, verdict, BASE, NEW, ratio [interval], p, MDE, n."""
    rows = []
    for metric in COMPARED_METRICS:
        m = c.metrics.get(metric)
        if m is None:
            continue
        nb, nn = _n(m)
        rows.append(
            [
                LABELS[metric],
                f"{MARK.get(m.verdict, '')} {m.verdict}",
                fmt_value(metric, m.base_value),
                fmt_value(metric, m.new_value),
                fmt_ratio(m),
                fmt_p(m.p_value),
                fmt_pct(m.mde),
                f"{nb} / {nn}" if metric != MEMORY_METRIC else "-",
            ]
        )
    return rows


DETAIL_HEADERS = ("metric", "verdict", "BASE", "NEW", "ratio [interval]", "p", "MDE", "n BASE / NEW")


def to_table(cmp: Comparison) -> Table:
    """The comparison for a terminal: one row per cell, compared cells first, the others after."""
    columns = metric_columns(cmp)
    caption = [escape(method_note(cmp))]
    caption += [f"[yellow]warning:[/yellow] {escape(w)}" for w in cmp.warnings]
    caption += [f"[dim]{escape(n)}[/dim]" for n in cmp.notes]
    table = Table(
        title=f"{escape(cmp.base['run_id'])} -> {escape(cmp.new['run_id'])}: {headline(cmp)}",
        caption="\n".join(caption),
        header_style="bold",
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("cell\n[dim]cell id[/dim]", overflow="fold", min_width=12)
    table.add_column("verdict\n[dim]MDE[/dim]", no_wrap=True)
    for metric in columns:
        table.add_column(LABELS[metric], justify="right")
    for c in cmp.cells:
        style = VERDICT_STYLE[c.verdict]
        table.add_row(
            f"{escape(c.name)}\n[dim]{c.cell_id[:8]}[/dim]",
            f"[{style}]{MARK[c.verdict]} {c.verdict}[/{style}]{_output_mark(c, ' [magenta]', '[/magenta]')}"
            f"\n[dim]{fmt_pct(c.mde)}[/dim]",
            *(fmt_ratio(c.metrics.get(m), "rich") for m in columns),
        )
    for label, rows in (
        ("only in BASE", cmp.only_base),
        ("only in NEW", cmp.only_new),
        ("not compared", cmp.not_compared),
    ):
        for s in rows:
            b, n = _status_text(s)
            text = label if label != "not compared" else f"{b} -> {n}"
            table.add_row(
                f"{escape(s.name)}\n[dim]{s.cell_id[:8]}[/dim]",
                f"[yellow]{escape(text)}[/yellow]",
                *(["-"] * len(columns)),
            )
    return table


OUTPUT_MARK = "≠ output"


def _output_mark(c: CellComparison, before: str = " ", after: str = "") -> str:
    """The marker beside a verdict when the cell's generated tokens changed between the runs."""
    return f"{before}{OUTPUT_MARK}{after}" if c.output_changed else ""


def _status_text(s: CellStatus) -> tuple[str, str]:
    return s.base_status or "absent", s.new_status or "absent"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_summary_table(cells: list[CellComparison], columns: list[str], limit: int) -> list[str]:
    lines = [
        "| cell | verdict | MDE | " + " | ".join(LABELS[m] for m in columns) + " |",
        "|---|---|---:|" + "---:|" * len(columns),
    ]
    for c in cells[:limit]:
        metrics = " | ".join(_md(fmt_ratio(c.metrics.get(m), "markdown")) for m in columns)
        verdict = f"{MARK[c.verdict]} {c.verdict}{_output_mark(c)}"
        lines.append(f"| `{_md(c.name)}` | {verdict} | {fmt_pct(c.mde)} | {metrics} |")
    if len(cells) > limit:
        lines.append(f"\n{len(cells) - limit} more not shown (see the JSON output).")
    return lines


def _md_details(cells: list[CellComparison], limit: int) -> list[str]:
    lines: list[str] = []
    for c in cells[:limit]:
        lines += [
            f"**`{_md(c.name)}`** ({c.cell_id[:8]}): {MARK[c.verdict]} {c.verdict}{_output_mark(c)}",
            "",
        ]
        lines.append("| " + " | ".join(DETAIL_HEADERS) + " |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in detail_rows(c)]
        notes = [f"{LABELS[k]}: {m.note}" for k, m in c.metrics.items() if m.note and m.verdict != NOT_TESTED]
        if notes:
            lines += ["", "; ".join(_md(n) for n in notes)]
        lines.append("")
    return lines


def to_markdown(cmp: Comparison, max_rows: int = 200) -> str:
    """A PR comment: the headline, the changed and inconclusive cells in detail, then the rest."""
    lines = [f"### tfbench compare: {headline(cmp)}", ""]

    def describe(info: dict[str, Any]) -> str:
        pkgs = info.get("packages") or {}
        extra = [f"commit `{short_sha(info.get('measured_commit'))}`"] if info.get("measured_commit") else []
        if info.get("dirty"):
            extra[-1:] = [f"{extra[-1]} with uncommitted changes" if extra else "uncommitted changes"]
        extra += [f"{k} {pkgs[k]}" for k in ("transformers", "torch") if pkgs.get(k)]
        if (info.get("code") or {}).get("given"):
            extra.append(f"from `{_md(info['code']['given'])}`")
        return f"`{_md(info['run_id'])}`" + (f" ({', '.join(extra)})" if extra else "")

    lines += [f"BASE {describe(cmp.base)} → NEW {describe(cmp.new)}", ""]
    for w in cmp.warnings:
        lines.append(f"> ⚠️ {_md(w)}")
    if cmp.warnings:
        lines.append("")
    columns = metric_columns(cmp)
    notable = [c for c in cmp.cells if c.verdict in (REGRESSION, IMPROVEMENT)]
    unsure = [c for c in cmp.cells if c.verdict == INCONCLUSIVE]
    unchanged = [c for c in cmp.cells if c.verdict == UNCHANGED]
    if notable:
        lines += ["#### Changed", ""] + _md_details(notable, max_rows)
    if unsure:
        lines += [f"<details><summary>{len(unsure)} inconclusive</summary>", ""]
        lines += _md_details(unsure, max_rows) + ["</details>", ""]
    if unchanged:
        lines += [f"<details><summary>{len(unchanged)} unchanged</summary>", ""]
        lines += _md_summary_table(unchanged, columns, max_rows)
        lines += ["", "</details>", ""]
    others = cmp.only_base + cmp.only_new + cmp.not_compared
    if others:
        lines += ["#### Cells not compared", "", "| cell | BASE | NEW | reason |", "|---|---|---|---|"]
        for s in others[:max_rows]:
            b, n = _status_text(s)
            reason = s.new_reason or s.base_reason or ""
            lines.append(f"| `{_md(s.name)}` | {b} | {n} | {_md(reason[:200])} |")
        if len(others) > max_rows:
            lines.append(f"\n{len(others) - max_rows} more not shown (see the JSON output).")
        lines.append("")
    if not cmp.cells and not others:
        lines += ["No cells in either run.", ""]
    lines.append(method_note(cmp))
    if any(_mem_flag(c) for c in cmp.cells):
        lines.append("Peak memory beyond the threshold is marked !.")
    if cmp.notes:
        lines += ["", "Differences: " + "; ".join(_md(n) for n in cmp.notes) + "."]
    return "\n".join(lines) + "\n"


def _mem_flag(c: CellComparison) -> bool:
    m = c.metrics.get(MEMORY_METRIC)
    return bool(m and m.beyond_threshold)


def to_json(cmp: Comparison) -> dict[str, Any]:
    """Everything, JSON-serializable (non-finite numbers as null)."""
    data = asdict(cmp)
    for row, c in zip(data["cells"], cmp.cells):
        row["cell"] = c.cell.to_dict()
    data["summary"] = {
        "headline": headline(cmp),
        "counts": cmp.counts(),
        "exit_code": exit_code(cmp),
        "metrics": {m: metric_tally(cmp, m) for m in (*KEY_METRICS, MEMORY_METRIC)},
    }
    return finite(data)
