"""A comparison of two runs as people read it: the terminal table, the pull-request markdown and
the JSON document."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.markup import escape
from rich.table import Table

from bench.analysis.compare import (
    COMPARED_METRICS,
    DEFAULT_THRESHOLD,
    IMPROVEMENT,
    INSUFFICIENT,
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
from bench.results.store import finite


def headline(cmp: Comparison) -> str:
    counts = cmp.counts()

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    parts = [
        plural(counts[REGRESSION], "regression"),
        plural(counts[IMPROVEMENT], "improvement"),
        f"{counts[UNCHANGED]} unchanged",
    ]
    if counts[INSUFFICIENT]:
        parts.append(f"{counts[INSUFFICIENT]} with insufficient data")
    other = counts["only in base"] + counts["only in new"] + counts["not compared"]
    if other:
        parts.append(f"{other} not compared")
    return ", ".join(parts)


def fmt_ratio(m: MetricComparison | None, markup: str = "plain") -> str:
    """'1.102 [1.081, 1.124]': the ratio and its interval; the ratio alone for memory.

    markup: "plain", "markdown" (bold and a mark when the metric has a verdict) or "rich" (colours,
    the interval on a second line so that a terminal table stays narrow).
    """
    if m is None or m.ratio is None:
        return "-"
    ratio = f"{m.ratio:.3f}"
    if m.ci_low is not None and m.ci_high is not None:
        interval = f"[{m.ci_low:.3f}, {m.ci_high:.3f}]"
    elif m.verdict == INSUFFICIENT:
        interval = "(n too small)"
    else:
        interval = ""
    decided = m.verdict in (REGRESSION, IMPROVEMENT)
    if markup == "rich":
        style = {REGRESSION: "bold red", IMPROVEMENT: "bold green"}.get(m.verdict, "")
        if m.verdict == NOT_TESTED and m.beyond_threshold:
            style = "yellow"
        text = f"[{style}]{ratio}[/{style}]" if style else ratio
        if m.ci_low is not None and m.ci_high is not None:
            interval = f"{m.ci_low:.3f}-{m.ci_high:.3f}"
        return text + (f"\n[dim]{escape(interval)}[/dim]" if interval else "")
    text = f"{ratio} {interval}".strip()
    if markup == "markdown":
        if decided:
            text = f"**{text}** {'🔴' if m.verdict == REGRESSION else '🟢'}"
        elif m.verdict == NOT_TESTED and m.beyond_threshold:
            text += " ⚠️"
    return text


VERDICT_STYLE = {REGRESSION: "bold red", IMPROVEMENT: "bold green", INSUFFICIENT: "yellow", UNCHANGED: "dim"}
VERDICT_MARK = {REGRESSION: "🔴 ", IMPROVEMENT: "🟢 ", INSUFFICIENT: "⚪ ", UNCHANGED: ""}


def metric_columns(cmp: Comparison) -> list[str]:
    """The metrics that appear in at least one compared cell, in table order."""
    present = {m for c in cmp.cells for m in c.metrics}
    return [m for m in COMPARED_METRICS if m in present]


def _status_text(s: CellStatus) -> tuple[str, str]:
    b = s.base_status or "absent"
    n = s.new_status or "absent"
    return b, n


def threshold_text(cmp: Comparison) -> str:
    default = cmp.thresholds.get("e2e_latency", DEFAULT_THRESHOLD)
    special = [f"{LABELS[m]} {t:.1%}".replace(".0%", "%") for m, t in cmp.thresholds.items() if t != default]
    text = f"{default:.1%}".replace(".0%", "%")
    return text + (f" ({', '.join(special)})" if special else "")


def to_table(cmp: Comparison) -> Table:
    """The comparison for a terminal: one row per cell, compared cells first, the others after."""
    columns = metric_columns(cmp)
    caption = [f"NEW/BASE medians, 95% interval below; verdicts need p < {cmp.alpha:g} and a change "]
    caption[0] += f"beyond {threshold_text(cmp)}; peak memory: ratio only"
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
    table.add_column("verdict", no_wrap=True)
    for metric in columns:
        table.add_column(LABELS[metric], justify="right")
    for c in cmp.cells:
        style = VERDICT_STYLE[c.verdict]
        table.add_row(
            f"{escape(c.name)}\n[dim]{c.cell_id[:8]}[/dim]",
            f"[{style}]{c.verdict}[/{style}]",
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


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_cells_table(cells: list[CellComparison], columns: list[str], limit: int) -> list[str]:
    lines = [
        "| cell | verdict | " + " | ".join(LABELS[m] for m in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for c in cells[:limit]:
        metrics = " | ".join(fmt_ratio(c.metrics.get(m), "markdown") for m in columns)
        lines.append(f"| `{_md(c.name)}` | {VERDICT_MARK[c.verdict]}{c.verdict} | {metrics} |")
    if len(cells) > limit:
        lines.append(f"\n{len(cells) - limit} more not shown (see the JSON output).")
    return lines


def to_markdown(cmp: Comparison, max_rows: int = 200) -> str:
    """A PR comment: the headline, the cells with a verdict other than unchanged, then the rest."""
    lines = [f"### tfbench compare: {headline(cmp)}", ""]

    def describe(info: dict[str, Any]) -> str:
        pkgs = info.get("packages") or {}
        extra = [f"commit `{short_sha(info.get('measured_commit'))}`"] if info.get("measured_commit") else []
        extra += [f"{k} {pkgs[k]}" for k in ("transformers", "torch") if pkgs.get(k)]
        return f"`{_md(info['run_id'])}`" + (f" ({', '.join(extra)})" if extra else "")

    lines += [f"BASE {describe(cmp.base)} → NEW {describe(cmp.new)}", ""]
    for w in cmp.warnings:
        lines.append(f"> ⚠️ {_md(w)}")
    if cmp.warnings:
        lines.append("")
    columns = metric_columns(cmp)
    notable = [c for c in cmp.cells if c.verdict != UNCHANGED]
    unchanged = [c for c in cmp.cells if c.verdict == UNCHANGED]
    if notable:
        lines += _md_cells_table(notable, columns, max_rows)
        lines.append("")
    if unchanged:
        lines += [f"<details><summary>{len(unchanged)} unchanged</summary>", ""]
        lines += _md_cells_table(unchanged, columns, max_rows)
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
    lines.append(
        f"Ratios are NEW/BASE medians with a 95% interval (Mann-Whitney U / Hodges-Lehmann); a verdict "
        f"needs p < {cmp.alpha:g} and a change beyond {threshold_text(cmp)}. Latencies: above 1 is slower; "
        "throughputs: below 1 is slower. Peak memory is one value per run: its ratio is not tested"
        + (" (⚠️ beyond the threshold)." if any(_mem_flag(c) for c in cmp.cells) else ".")
    )
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
    data["summary"] = {"headline": headline(cmp), "counts": cmp.counts(), "exit_code": exit_code(cmp)}
    return finite(data)
