"""What a person sees: the plan, a progress bar while cells run, and the summary table at the end."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bench.plan.matrix import Cell, Plan
from bench.results.outputs import agreement, agreement_label
from bench.results.records import CellRecord

STATUS_STYLE = {
    "ok": "green",
    "skipped": "dim",
    "failed": "red",
    "oom": "red",
    "timeout": "red",
    "interrupted": "yellow",
    "lost": "red",
    "running": "yellow",
}


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _ms(record: CellRecord, metric: str, stat: str) -> str:
    value = record.stat(metric, stat)
    return "-" if value is None else f"{value * 1e3:.2f}"


def combo_label(cell: Cell) -> str:
    parts = [cell.attn_implementation]
    if cell.compile:
        parts.append(f"compile:{cell.compile}")
    if cell.kernelize:
        parts.append("kernels")
    if cell.continuous_batching:
        parts.append("cb")
    if cell.quantization != "none":
        parts.append(cell.quantization)
    if getattr(cell, "tp_size", 1) > 1:
        parts.append(f"tp{cell.tp_size}")
    return "+".join(parts)


SUMMARY_HEADERS = ("cell", "shape", "status", "e2e p50 ms", "e2e p95 ms", "ttft p50 ms", "tpot p50 ms",
                   "itl p95 ms", "tok/s p50", "peak mem", "n", "output", "cell id")  # fmt: skip
# Above this many rows the tables are printed as plain aligned text: rich lays out a 10,000-row
# table in tens of seconds, plain text in a fraction of one.
RICH_ROW_LIMIT = 500


def _shape(cell: Cell) -> str:
    return f"b{cell.batch_size} s{cell.sequence_length} n{cell.num_tokens_to_generate}"


def _by_index(records: Iterable[CellRecord]) -> list[CellRecord]:
    return sorted(records, key=lambda r: r.cell.index)


def summary_rows(records: Iterable[CellRecord]) -> list[list[str]]:
    """One row per cell: latencies in ms (p50 and p95), throughput, memory, n, its output's
    agreement with the reference cell (outputs.agreement_label), and the cell id."""
    rows = []
    records = _by_index(records)
    agreed = agreement(records)
    for rec in records:
        if rec.ok:
            cols = [
                _ms(rec, "e2e_latency", "p50"),
                _ms(rec, "e2e_latency", "p95"),
                _ms(rec, "ttft", "p50"),
                _ms(rec, "tpot", "p50"),
                _ms(rec, "itl", "p95"),
                fmt_rate(rec.stat("e2e_throughput", "p50")),
                fmt_bytes(rec.peak_memory_bytes),
                str(int(rec.stat("e2e_latency", "n") or 0)),
            ]
        else:
            cols = ["-"] * 8  # why: see the unmeasured rows
        said = agreement_label(agreed.get(rec.cell_id))
        if rec.output is not None and rec.output.degenerate:
            said += " (degenerate)"
        rows.append([combo_label(rec.cell), _shape(rec.cell), rec.status, *cols, said, rec.cell_id[:8]])
    return rows


def unmeasured_rows(records: Iterable[CellRecord]) -> list[list[str]]:
    """Cells without numbers and why: skipped, failed, timed out, out of memory, interrupted."""
    return [
        [combo_label(r.cell), _shape(r.cell), r.status, (r.reason or "")[:300], r.cell_id[:8]]
        for r in _by_index(records)
        if not r.ok
    ]


def _styled_status(status: str) -> str:
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status


def summary_table(records: Iterable[CellRecord], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", title_justify="left")
    for i, header in enumerate(SUMMARY_HEADERS):
        if 3 <= i <= 10:
            name, _, unit = header.rpartition(" ") if header.endswith((" ms", " p50")) else (header, "", "")
            table.add_column(
                f"{name}\n[dim]{unit}[/dim]" if unit else header, justify="right", no_wrap=i < 10
            )
        else:
            table.add_column(header, no_wrap=True, style="dim" if header == "cell id" else None)
    for row in summary_rows(records):
        table.add_row(escape(row[0]), row[1], _styled_status(row[2]), *row[3:])
    return table


def unmeasured_table(records: Iterable[CellRecord]) -> Table | None:
    rows = unmeasured_rows(records)
    if not rows:
        return None
    table = Table(title="cells without measurements", header_style="bold", title_justify="left")
    for header in ("cell", "shape", "status"):
        table.add_column(header, no_wrap=True)
    table.add_column("reason")
    table.add_column("cell id", style="dim", no_wrap=True)
    for row in rows:
        table.add_row(escape(row[0]), row[1], _styled_status(row[2]), escape(row[3]), row[4])
    return table


def aligned_lines(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int], rule: bool = False
) -> list[str]:
    """Plain text columns two spaces apart, the `right` ones right-aligned; `rule`: dashes under the header."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    out = [line(headers).rstrip()]
    if rule:
        out.append(line(["-" * w for w in widths]).rstrip())
    return out + [line(r).rstrip() for r in rows]


def table_lines(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int], markdown: bool = False
) -> list[str]:
    """One table, two ways: plain text columns with dashes under the header (aligned_lines), or a
    Markdown table (`right` columns right-aligned, a '|' in a cell escaped)."""
    if not markdown:
        return aligned_lines(headers, rows, right, rule=True)
    out = ["| " + " | ".join(headers) + " |"]
    out.append("|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|")
    return out + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def text_table(headers: Iterable[str], rows: list[list[str]], title: str | None = None) -> str:
    """Plain aligned columns (numbers right-aligned), for tables too long for rich."""
    headers = list(headers)
    numeric = {i for i in range(len(headers)) if all(r[i][:1].isdigit() or r[i] == "-" for r in rows)}
    out = [title] if title else []
    return "\n".join([*out, *aligned_lines(headers, rows, numeric)]) + "\n"


def print_summary(console: Console, records: list[CellRecord], title: str | None = None) -> None:
    """The summary and the unmeasured cells, as rich tables, or as plain text for large runs."""
    if len(records) <= RICH_ROW_LIMIT:
        console.print(summary_table(records, title=title))
        unmeasured = unmeasured_table(records)
        if unmeasured is not None:
            console.print(unmeasured)
        return
    console.file.write(text_table(SUMMARY_HEADERS, summary_rows(records), title))
    rows = unmeasured_rows(records)
    if rows:
        console.file.write("\n" + text_table(("cell", "shape", "status", "reason", "cell id"), rows,
                                               "cells without measurements"))  # fmt: skip
    console.file.flush()


def profile_lines(records: Iterable[CellRecord]) -> list[str]:
    """Each profiled cell's top operators by self time (device time on a GPU, CPU time otherwise),
    the shares of attention, matmul and the rest, and its trace's path; or why it has no trace."""
    out: list[str] = []
    for rec in _by_index(records):
        prof = rec.profile
        if prof is None:
            continue
        head = f"profile of {combo_label(rec.cell)} {_shape(rec.cell)} ({rec.cell_id[:8]})"
        if not prof.available:
            out += [head + f": no trace, {prof.reason}", ""]
            continue
        shares = ", ".join(f"{k} {v:.0%}" for k, v in prof.shares.items() if v is not None)
        out.append(f"{head}: {prof.new_tokens} new tokens, {prof.time} self time; {shares}")
        out.append(f"trace: {prof.trace} ({fmt_bytes(prof.trace_bytes)})")
        note = (prof.model_extra or {}).get("note")
        if note:
            out.append(f"note: {note}")
        rows = [
            [
                op.name[:60],
                str(op.calls),
                f"{op.self_time_us / 1e3:.3f}",
                f"{(op.share or 0):.1%}",
                op.family or "",
            ]
            for op in prof.top_ops
        ]
        out += aligned_lines(("operator", "calls", "self ms", "share", "family"), rows, {1, 2, 3}, rule=True)
        out.append("")
    return out


def plan_table(plan: Plan, title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold")
    # A quantization column only where the plan quantizes, a tp column only where a cell is
    # tensor-parallel: most plans do neither.
    quantized = any(c.quantization != "none" for c in plan.cells)
    tp = any(c.tp_size > 1 for c in plan.cells)
    names = (
        "#",
        "cell id",
        "attn",
        "compile",
        "kernels",
        "cb",
        *(["quantization"] if quantized else []),
        *(["tp"] if tp else []),
        "batch",
        "seq",
        "new",
    )
    for name in (*names, "plan"):
        table.add_column(
            name,
            justify="right" if name in ("#", "tp", "batch", "seq", "new") else "left",
            no_wrap=name in ("cell id", "attn", "compile"),
            min_width=16 if name == "cell id" else None,
        )
    for c in plan.cells:
        verdict = "run" if c.runnable else f"[dim]skip: {escape(c.skip_reason or '')}[/dim]"
        table.add_row(
            str(c.index),
            c.cell_id,
            c.attn_implementation,
            c.compile or "-",
            "yes" if c.kernelize else "-",
            "yes" if c.continuous_batching else "-",
            *([c.quantization if c.quantization != "none" else "-"] if quantized else []),
            *([str(c.tp_size)] if tp else []),
            str(c.batch_size),
            str(c.sequence_length),
            str(c.num_tokens_to_generate),
            verdict,
        )
    return table


def shard_table(rows: list[dict[str, Any]]) -> Table:
    """How shards split a plan: cells per shard and each one's share of the estimated work."""
    table = Table(
        title="shards (TFBENCH_SHARD=i/N)",
        caption="work: tokens through the model, estimated from the shapes, plus a fixed cost per cell",
    )
    for name in ("shard", "to run", "skipped", "work share"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            f"{r['shard']}/{len(rows)}", str(r["runnable"]), str(r["skipped"]), f"{r['work_share']:.1%}"
        )
    return table


def plan_lines(plan: Plan) -> Iterable[str]:
    """A plain, fast rendering for large plans (a rich table of 10,000 rows takes seconds)."""
    yield f"{'#':>6}  {'cell id':16}  {'name':60}  plan"
    for c in plan.cells:
        verdict = "run" if c.runnable else f"skip: {c.skip_reason}"
        yield f"{c.index:>6}  {c.cell_id:16}  {c.name:60}  {verdict}"


def cpulist(cpus: list[int]) -> str:
    """Cores as Linux writes them: 0-3,8-11."""
    spans: list[list[int]] = []
    for c in sorted(cpus):
        if spans and c == spans[-1][1] + 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


def where(slot: dict[str, Any] | None) -> str:
    """A running cell's GPUs and cores, short (bench.run.pool.Slot.fields); "" when not placed."""
    parts = []
    if slot and slot.get("gpus"):
        parts.append(", ".join(u[:12] for u in slot["gpus"]))
    if slot and slot.get("cpus"):
        parts.append(f"cores {cpulist(slot['cpus'])}")
    return f" [dim]({'; '.join(parts)})[/dim]" if parts else ""


class ProgressReporter:
    """A rich progress bar over the cells with the running cell and its phase; a line per finished cell."""

    def __init__(self, console: Console, label: str = "", progress: Progress | None = None, tag: str = ""):
        """progress: another reporter's display to add a bar to (two runs measured side by side);
        tag: a word that starts each of this reporter's lines (which run it is)."""
        self.console = console
        self.label = label
        self.owner = progress is None
        self.tag = f"[dim]{escape(tag):<4}[/dim] " if tag else ""
        self.progress = progress or Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("cells"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[current]}"),
            console=console,
            transient=False,
        )
        self.task_id: Any = None
        self.done = 0
        self.running: dict[str, str] = {}  # a line per running cell (several at once with a pool)

    def start(self, plan: Plan) -> None:
        if self.owner:
            self.progress.start()
        self.task_id = self.progress.add_task(self.label or "cells", total=len(plan.cells), current="")

    def cell_started(
        self,
        cell: Cell,
        attempt: int = 1,
        process: int = 0,
        processes: int = 1,
        slot: dict[str, Any] | None = None,
    ) -> None:
        again = f" (attempt {attempt})" if attempt > 1 else ""
        which = f" process {process + 1}/{processes}" if processes > 1 else ""
        self.running[cell.cell_id] = f"{escape(cell.name)} ·{which} starting{again}{where(slot)}"
        self._show()

    def cell_phase(self, cell: Cell, phase: str, i: int, total: int) -> None:
        text = {"load": "loading model", "done": "writing result"}.get(phase, phase)
        if total:
            text = f"{phase} {i}/{total}"
        self.running[cell.cell_id] = f"{escape(cell.name)} · {text}"
        self._show()

    def _show(self) -> None:
        self.progress.update(self.task_id, current="\n".join(self.running.values()))

    def cell_done(self, cell: Cell, record: CellRecord, final: bool = True, quiet: bool = False) -> None:
        """A cell's attempt ended; `final` when no further attempt follows (the bar advances)."""
        if final:
            self.done += 1
        self.running.pop(cell.cell_id, None)
        self.progress.update(
            self.task_id, advance=1 if final else 0, current="\n".join(self.running.values())
        )
        if quiet:
            return
        status = record.status
        style = STATUS_STYLE.get(status, "")
        if status == "ok":
            detail = (
                f"e2e p50 {fmt_seconds(record.stat('e2e_latency', 'p50'))}  "
                f"ttft p50 {fmt_seconds(record.stat('ttft', 'p50'))}  "
                f"tpot p50 {fmt_seconds(record.stat('tpot', 'p50'))}"
            )
        else:
            detail = escape((record.reason or "")[:160])
        attempt = record.attempt or 1
        retry = not final and status != "interrupted"
        if status != "skipped" and (attempt > 1 or retry):
            detail = f"[dim](attempt {attempt}{', will retry' if retry else ''})[/dim] {detail}"
        self.progress.console.print(
            f"{self.tag}[{style}]{status:>11}[/{style}]  {escape(cell.name)}  [dim]{cell.cell_id[:8]}[/dim]  {detail}",
            highlight=False,
        )

    def note(self, text: str) -> None:
        if self.task_id is not None:
            self.progress.update(self.task_id, current=escape(text))

    def stop(self) -> None:
        if self.owner:
            self.progress.stop()
