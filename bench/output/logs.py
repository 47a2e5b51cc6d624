"""Run logs in two formats: for a person (rich progress bar and tables) or for a log collector
(TFBENCH_LOG_FORMAT=json: one JSON object per line on stderr, no colours, no bar).

Both get the same events: run started/continued, each cell's start and end, merges, the end of
the run and errors. Every line is redacted (bench.secrets): a token in an error text from a
library, a path or a server answer never reaches a log.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape

from bench.errors import UserError
from bench.plan.matrix import Cell, Plan
from bench.results.records import CellRecord
from bench.secrets import redact

LOG_FORMATS = ("human", "json")
# Stats a cell_done event carries, so a log collector can chart runs without reading files.
EVENT_STATS = (("e2e_latency", "p50"), ("ttft", "p50"), ("tpot", "p50"), ("e2e_throughput", "p50"))


def log_format(environ: Mapping[str, str], flag: str | None = None) -> str:
    value = flag or environ.get("TFBENCH_LOG_FORMAT") or "human"
    if value not in LOG_FORMATS:
        source = "--log-format" if flag else "TFBENCH_LOG_FORMAT"
        raise UserError(f"{source} = {value!r}: allowed: {', '.join(LOG_FORMATS)}")
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class JsonLog:
    """JSON lines on a stream; each line is one complete object, flushed at once."""

    human = False

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        line = {"ts": _now(), "level": level, "event": event, **fields}
        self.stream.write(redact(json.dumps(line, default=str)) + "\n")
        self.stream.flush()


class HumanLog:
    human = True

    def __init__(self, console: Console):
        self.console = console

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        message = redact(str(fields.get("message", event)))
        # soft_wrap: never break a line (a path or a command in it must stay copy-pasteable).
        if level == "error":
            self.console.print(f"tfbench: error: {message}", highlight=False, markup=False, soft_wrap=True)
        elif level == "warning":
            self.console.print(
                f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True
            )
        else:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)


def cell_fields(cell: Cell) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "cell": cell.name}


class JsonReporter:
    """The ProgressReporter's interface, as JSON-lines events."""

    def __init__(self, log: JsonLog, run_id: str):
        self.log = log
        self.run_id = run_id
        self.total = 0
        self.done = 0
        self._phase: dict[str, str] = {}  # each running cell's phase (several run at once with a pool)

    def start(self, plan: Plan) -> None:
        self.total = len(plan.cells)

    def cell_started(
        self,
        cell: Cell,
        attempt: int = 1,
        process: int = 0,
        processes: int = 1,
        slot: dict[str, Any] | None = None,
    ) -> None:
        """slot: the GPUs and cores the worker runs on (bench.run.pool.Slot.fields)."""
        self._phase.pop(cell.cell_id, None)
        where = {k: v for k, v in (slot or {}).items() if v is not None}
        self.log.emit(
            "cell_started",
            run_id=self.run_id,
            attempt=attempt,
            process=process,
            processes=processes,
            **cell_fields(cell),
            **where,
        )

    def cell_phase(self, cell: Cell, phase: str, i: int, total: int) -> None:
        if self._phase.get(cell.cell_id) == phase:  # one line per phase, not one per iteration
            return
        self._phase[cell.cell_id] = phase
        self.log.emit("cell_phase", run_id=self.run_id, phase=phase, **cell_fields(cell))

    def cell_done(self, cell: Cell, record: CellRecord, final: bool = True, quiet: bool = False) -> None:
        if final:
            self.done += 1
        if quiet:
            return
        status = record.status
        fields: dict[str, Any] = {
            "run_id": self.run_id,
            **cell_fields(cell),
            "status": status,
            "attempt": record.attempt,
            "final": final,
            "done": self.done,
            "total": self.total,
        }
        if status == "ok":
            for metric, stat in EVENT_STATS:
                fields[f"{metric}_{stat}"] = record.stat(metric, stat)
        else:
            fields["reason"] = record.reason
        level = "info" if status in ("ok", "skipped") else "warning"
        self.log.emit("cell_done", level=level, **fields)

    def note(self, text: str) -> None:
        self.log.emit("note", run_id=self.run_id, message=text)

    def stop(self) -> None:
        pass


def warn_skipped(log: Any, skipped: Any, action: str = "skipped") -> None:
    """One warning per file in a cells/ directory that is not a cell record."""
    log.emit(
        "foreign_file",
        level="warning",
        path=str(skipped.path),
        reason=skipped.reason,
        message=f"{skipped.path}: {skipped.reason}; {action}",
    )
