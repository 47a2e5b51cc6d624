"""Shards: which cells of a plan shard i of N runs, so that N machines share one matrix.

Pure functions of the plan; every shard computes the same assignment on its own, so the
shards need no coordination beyond the shard index, the shard count and a shared run id.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.errors import UserError
from bench.plan.matrix import Cell, Plan

# A fixed per-cell cost (load, warm-up set-up, process start) in the unit of the estimate:
# tokens through the model. Keeps many tiny cells from piling onto one shard.
CELL_OVERHEAD_TOKENS = 4096


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _int(text: str, source: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise UserError(f"{source} = {text!r}: {what} must be an integer") from None


def parse_shard(environ: Mapping[str, str], flag: str | None = None) -> Shard | None:
    """The shard this process runs, from --shard, TFBENCH_SHARD=i/N, or Kubernetes'
    JOB_COMPLETION_INDEX with TFBENCH_SHARD_COUNT=N; None when the run is not sharded."""
    spec, source = (flag, "--shard") if flag else (environ.get("TFBENCH_SHARD"), "TFBENCH_SHARD")
    count_text = environ.get("TFBENCH_SHARD_COUNT")
    if spec and count_text and not flag:
        raise UserError(
            "both TFBENCH_SHARD and TFBENCH_SHARD_COUNT are set; use TFBENCH_SHARD=i/N, "
            "or TFBENCH_SHARD_COUNT=N with JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)"
        )
    if spec:
        index_text, sep, count_part = spec.partition("/")
        if not sep:
            raise UserError(f"{source} = {spec!r}: allowed: i/N, shard i (from 0) of N shards, e.g. 0/4")
        index = _int(index_text, source, "the shard index i in i/N")
        count = _int(count_part, source, "the shard count N in i/N")
    elif count_text:
        count = _int(count_text, "TFBENCH_SHARD_COUNT", "the shard count")
        index_text = environ.get("JOB_COMPLETION_INDEX")
        if index_text is None:
            raise UserError(
                "TFBENCH_SHARD_COUNT is set but JOB_COMPLETION_INDEX is not: outside an Indexed Job, "
                "use TFBENCH_SHARD=i/N"
            )
        index = _int(index_text, "JOB_COMPLETION_INDEX", "the completion index")
        source = "JOB_COMPLETION_INDEX/TFBENCH_SHARD_COUNT"
    else:
        return None
    if count < 1:
        raise UserError(f"{source}: shard count {count}: allowed: an integer >= 1")
    if not 0 <= index < count:
        raise UserError(f"{source}: shard index {index}: allowed: 0 to {count - 1} for {count} shards")
    return Shard(index, count)


def cell_cost(cell: Cell, iterations: int) -> int:
    """Estimated work of a cell: tokens through the model over all its runs, plus a fixed cost."""
    if not cell.runnable:
        return 0
    per_run = cell.batch_size * (cell.sequence_length + cell.num_tokens_to_generate)
    return CELL_OVERHEAD_TOKENS + iterations * per_run


def assign(cells: Sequence[Cell], count: int, iterations: int) -> dict[str, int]:
    """cell_id -> shard index. Runnable cells go, most expensive first, to the least loaded shard
    (longest-processing-time first: the spread between shards is at most one cell's cost);
    skipped cells cost nothing and are dealt round-robin so every shard records its share."""
    out: dict[str, int] = {}
    runnable = sorted((c for c in cells if c.runnable), key=lambda c: (-cell_cost(c, iterations), c.index))
    heap = [(0, i) for i in range(count)]
    for cell in runnable:
        load, i = heapq.heappop(heap)
        out[cell.cell_id] = i
        heapq.heappush(heap, (load + cell_cost(cell, iterations), i))
    for k, cell in enumerate(sorted((c for c in cells if not c.runnable), key=lambda c: c.index)):
        out[cell.cell_id] = k % count
    return out


def shard_plan(plan: Plan, shard: Shard, iterations: int) -> Plan:
    """The plan restricted to one shard's cells (indices and ids unchanged)."""
    owner = assign(plan.cells, shard.count, iterations)
    cells = [c for c in plan.cells if owner[c.cell_id] == shard.index]
    warnings = list(plan.warnings)
    if not any(c.runnable for c in cells):
        warnings.append(f"shard {shard} has no cell to run ({len(plan.runnable)} runnable cells in the plan)")
    return Plan(cells=cells, capabilities=plan.capabilities, warnings=warnings)


def shard_summary(cells: Sequence[Cell], count: int, iterations: int) -> list[dict[str, int | float]]:
    """Per shard: cells to run, cells skipped, and its share of the estimated work."""
    owner = assign(cells, count, iterations)
    rows = [{"shard": i, "runnable": 0, "skipped": 0, "work": 0} for i in range(count)]
    for cell in cells:
        row = rows[owner[cell.cell_id]]
        row["runnable" if cell.runnable else "skipped"] += 1
        row["work"] += cell_cost(cell, iterations)
    total = sum(r["work"] for r in rows) or 1
    for r in rows:
        r["work_share"] = r["work"] / total
    return rows
