"""What a cell generated, and what its profile says: pure functions over plain values, shared by
the worker (which records them) and the readers (summary rows, tables, compare).

- output_digest: the token ids of the first sequence of the cell's last timed run, capped, with
  their count and a sha256 of all of them (two cells produced the same tokens iff the digests match).
- degenerate: one token repeated, or a short loop, over most of a real model's output.
- agreement: each cell against the reference cell of its model, dtype and shape (eager, no
  compile, no kernels, no continuous batching, unquantized): the match rate over the common prefix and where
  the tokens first differ. Divergence is reported, never failed: bf16 numerics, another kernel or
  another attention legitimately change the argmax after some tokens.
- op_family / op_summary: a profiler's operators, the top ones by self time, and the share of
  attention, matmul and the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

# Token ids kept in the record: enough to see where two outputs part, small beside the timings.
OUTPUT_TOKENS_KEPT = 64
# A loop of period <= this covering at least this share of the output is degenerate.
LOOP_PERIOD_MAX = 4
LOOP_SHARE = 0.8
# Operators kept in a cell's profile summary.
TOP_OPS = 15


def output_digest(ids: Sequence[int], text: str | None = None) -> dict[str, Any]:
    """The Output part of a record: the first OUTPUT_TOKENS_KEPT ids, their count, a sha256 of all
    of them (the decimal ids joined by commas), and the decoded text of the kept ids when known."""
    ids = [int(i) for i in ids]
    digest = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()
    out: dict[str, Any] = {"tokens": ids[:OUTPUT_TOKENS_KEPT], "n": len(ids), "sha256": digest}
    if text is not None:
        out["text"] = text
    return out


def degenerate(ids: Sequence[int]) -> str | None:
    """Why the output looks degenerate, or None: one token repeated, or a loop of period
    <= LOOP_PERIOD_MAX over at least LOOP_SHARE of it (judged on the tail, where a loop settles)."""
    n = len(ids)
    if n < 2 * LOOP_PERIOD_MAX:
        return None  # too short to tell a loop from a phrase
    for period in range(1, LOOP_PERIOD_MAX + 1):
        # The longest suffix in which every token equals the one `period` before it.
        run = period
        for i in range(n - 1, period - 1, -1):
            if ids[i] != ids[i - period]:
                run = n - i - 1 + period
                break
        else:
            run = n
        if run >= LOOP_SHARE * n:
            if period == 1 or len(set(ids[-period:])) == 1:
                return f"one token ({ids[-1]}) repeated over {run} of {n} tokens"
            return f"a loop of period {period} over {run} of {n} tokens"
    return None


def is_reference(cell: Any) -> bool:
    """The cell other cells of its model, dtype and shape are compared with. It is unquantized and
    runs in one process: a quantized or tensor-parallel cell's agreement shows what its
    quantization or sharding changes (records of versions without those fields read as neither)."""
    return (
        cell.attn_implementation == "eager"
        and not cell.compile
        and not cell.kernelize
        and not cell.continuous_batching
        and getattr(cell, "quantization", "none") == "none"
        and getattr(cell, "tp_size", 1) == 1
    )


def _group(cell: Any) -> tuple[Any, ...]:
    return (
        cell.model,
        cell.revision,
        cell.dtype,
        cell.device,
        cell.batch_size,
        cell.sequence_length,
        cell.num_tokens_to_generate,
    )


def compare_tokens(ref: Sequence[int], other: Sequence[int]) -> dict[str, Any]:
    """Match rate over the common prefix length (positions where both have a token) and the first
    position where they differ (None: they agree over the whole common length)."""
    common = min(len(ref), len(other))
    same = [a == b for a, b in zip(ref[:common], other[:common])]
    first = next((i for i, s in enumerate(same) if not s), None)
    return {"match_rate": (sum(same) / common) if common else None, "diverges_at": first}


def agreement(records: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """cell id -> its agreement with the reference cell of the same model, dtype and shape, for
    every record with an output whose group has a measured reference. Equal sha256: the whole
    output matches; otherwise the kept ids are compared (a divergence past them shows as
    match_rate 1.0 with diverges_at None and equal False)."""
    records = list(records)
    refs = {}
    for rec in records:
        if getattr(rec, "output", None) is not None and is_reference(rec.cell):
            refs.setdefault(_group(rec.cell), rec)
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        ref = refs.get(_group(rec.cell))
        if ref is None or getattr(rec, "output", None) is None:
            continue
        equal = rec.output.sha256 == ref.output.sha256
        row = {"reference": ref.cell_id, "equal": equal, "is_reference": rec.cell_id == ref.cell_id}
        if equal:
            row.update(match_rate=1.0, diverges_at=None)
        else:
            row.update(compare_tokens(ref.output.tokens, rec.output.tokens))
        out[rec.cell_id] = row
    return out


def agreement_label(row: dict[str, Any] | None) -> str:
    """The summary table's word for a cell's agreement: 'ref', '= ref', 'diverges at 17', '-'."""
    if row is None:
        return "-"
    if row["is_reference"]:
        return "ref"
    if row["equal"]:
        return "= ref"
    if row.get("diverges_at") is not None:
        return f"diverges at {row['diverges_at']}"
    return f"diverges past {OUTPUT_TOKENS_KEPT}"


# Substrings of an operator's name, lowercased, that make it attention or a matmul. Attention is
# looked for first: a fused attention kernel's name may also mention gemm or bmm.
ATTENTION_MARKS = ("attention", "attn", "softmax", "flash", "sdpa", "_efficient_", "fmha")
MATMUL_MARKS = ("matmul", "mm", "gemm", "linear", "addmm", "bmm", "baddbmm", "cublas", "cutlass", "einsum")


def is_operator(name: str) -> bool:
    """A profiled CPU event that is an operator (aten::mm, cudnn::..., a custom op: a namespaced
    name), not a Python frame that with_stack adds ("file.py(12): f", "<built-in method ...>"),
    which would count the same time twice and idle waits of other threads besides."""
    return "::" in name and not name.startswith("<") and "): " not in name


def op_family(name: str) -> str:
    """attention, matmul or other, from an operator's (or kernel's) name. The rule: a name that
    contains an ATTENTION_MARKS substring is attention (softmax counts: in eager attention it is
    the attention's own step); else one with a MATMUL_MARKS substring as a word part (aten::mm,
    aten::linear, a cuBLAS or CUTLASS gemm kernel) is matmul; everything else is other."""
    low = name.lower()
    if any(m in low for m in ATTENTION_MARKS):
        return "attention"
    parts = {p for p in low.replace(":", "_").replace("<", "_").replace("(", "_").split("_") if p}
    if any(m in low for m in MATMUL_MARKS if len(m) > 3) or parts & {"mm", "bmm", "addmm", "gemm"}:
        return "matmul"
    return "other"


def op_summary(ops: Iterable[tuple[str, int, float]], top: int = TOP_OPS) -> dict[str, Any]:
    """From (name, calls, self time in µs) per operator: the top ones by self time with their
    share of the total, and the share of each family (attention, matmul, other)."""
    ops = [(n, int(c), float(t)) for n, c, t in ops if t > 0]
    total = sum(t for _, _, t in ops)
    rows = sorted(ops, key=lambda o: -o[2])[:top]
    shares = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    for name, _, t in ops:
        shares[op_family(name)] += t
    return {
        "top_ops": [
            {
                "name": n,
                "calls": c,
                "self_time_us": t,
                "share": t / total if total else None,
                "family": op_family(n),
            }
            for n, c, t in rows
        ],
        "total_self_time_us": total,
        "shares": {k: (v / total if total else None) for k, v in shares.items()},
    }
