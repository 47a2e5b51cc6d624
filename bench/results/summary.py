"""summary.jsonl: one flat row per cell with the same columns in every row, so that pandas and
datasets infer one schema (and a Hub dataset's "summarized" config reads every run alike)."""

from __future__ import annotations

from typing import Any

from bench.results.outputs import agreement
from bench.results.records import METRICS, RUN_METRICS, STAT_NAMES, CellRecord

AXES = (
    "model",
    "dtype",
    "device",
    "attn_implementation",
    "compile",
    "kernelize",
    "continuous_batching",
    "quantization",
    "batch_size",
    "sequence_length",
    "num_tokens_to_generate",
)

# GPU telemetry and roofline columns (null where not measured, e.g. on the CPU).
GPU_COLUMNS = (
    "energy_per_token_j_p50",
    "energy_per_run_j_p50",
    "gpu_util_pct_mean",
    "power_w_mean",
    "sm_clock_mhz_mean",
    "nvml_used_peak_bytes",
    "kv_cache_bytes",
    "decode_mbu",
    "prefill_mfu",
)


def summary_columns() -> list[str]:
    cols = ["run_id", "cell_id", "name", "status", "reason", *AXES]
    cols += [f"{m}_{s}" for m in METRICS for s in STAT_NAMES]
    # The process is the unit of the noise: each one's median, and their spread (CV of the log).
    cols += ["processes"]
    cols += [f"{m}_{s}" for m in RUN_METRICS for s in PROCESS_STATS]
    cols += ["peak_memory_bytes", "load_time_s", "warmup_time_s", "worker_pid", "attempt", "shard"]
    cols += [*GPU_COLUMNS]
    cols += [*OUTPUT_COLUMNS]
    return cols


# What the cell generated and how it agrees with its reference cell (bench.results.outputs).
OUTPUT_COLUMNS = (
    "output_n",
    "output_sha256",
    "output_degenerate",
    "agreement_reference",
    "agreement_match_rate",
    "agreement_diverges_at",
)


PROCESS_STATS = ("process_p50s", "process_cv")


def stat_columns(record: CellRecord) -> dict[str, Any]:
    """<metric>_<stat> for every metric and statistic (n is 0, never null, when not measured)."""
    row: dict[str, Any] = {}
    for metric in METRICS:
        stats = record.stats.get(metric)
        for stat in STAT_NAMES:
            value = getattr(stats, stat, None) if stats is not None else None
            row[f"{metric}_{stat}"] = (0 if value is None else value) if stat == "n" else value
    row["processes"] = record.process_count
    for metric in RUN_METRICS:
        extra = (record.stats.get(metric).model_extra or {}) if metric in record.stats else {}
        p50s = extra.get("process_p50s")
        if p50s is None:  # one process (or a record of an earlier version): its median is the p50
            p50s = [p] if (p := record.stat(metric, "p50")) is not None and record.process_count == 1 else []
        row[f"{metric}_process_p50s"] = p50s
        row[f"{metric}_process_cv"] = extra.get("process_cv")
    return row


def summary_rows(run_id: str, records: list[CellRecord]) -> list[dict[str, Any]]:
    """The rows of a run's cells, by cell index, each with its agreement with its reference cell."""
    agreed = agreement(records)
    ordered = sorted(records, key=lambda r: r.cell.index)
    return [summary_row(run_id, r, agreed.get(r.cell_id)) for r in ordered]


def summary_row(run_id: str, record: CellRecord, agreed: dict[str, Any] | None = None) -> dict[str, Any]:
    """One flat row with the same columns for every cell (agreed: its row of outputs.agreement)."""
    cell = record.cell
    row: dict[str, Any] = {
        "run_id": run_id,
        "cell_id": record.cell_id,
        "name": cell.name,
        "status": record.status,
        "reason": record.reason,
    }
    for axis in AXES:
        row[axis] = getattr(cell, axis)
    row.update(stat_columns(record))
    row["peak_memory_bytes"] = record.peak_memory_bytes
    row["load_time_s"] = record.load_time_s
    row["warmup_time_s"] = record.warmup_time_s
    row["worker_pid"] = record.worker_pid
    row["attempt"] = record.attempt or (0 if record.status == "skipped" else 1)
    row["shard"] = record.shard
    row.update(gpu_row(record))
    out = record.output
    row["output_n"] = out.n if out is not None else None
    row["output_sha256"] = out.sha256 if out is not None else None
    row["output_degenerate"] = out.degenerate if out is not None else None
    row["agreement_reference"] = agreed["reference"] if agreed else None
    row["agreement_match_rate"] = agreed["match_rate"] if agreed else None
    row["agreement_diverges_at"] = agreed["diverges_at"] if agreed else None
    return row


def gpu_row(record: CellRecord) -> dict[str, Any]:
    telemetry = record.gpu_telemetry
    roof = record.roofline
    memory = record.memory
    kv = memory.kv_cache_bytes if memory is not None else None
    return {
        "energy_per_token_j_p50": getattr(telemetry and telemetry.energy_per_token_j, "p50", None),
        "energy_per_run_j_p50": getattr(telemetry and telemetry.energy_per_run_j, "p50", None),
        "gpu_util_pct_mean": telemetry.mean("gpu_util_pct") if telemetry else None,
        "power_w_mean": telemetry.mean("power_w") if telemetry else None,
        "sm_clock_mhz_mean": telemetry.mean("sm_clock_mhz") if telemetry else None,
        "nvml_used_peak_bytes": memory.nvml_used_peak_bytes if memory is not None else None,
        "kv_cache_bytes": kv if kv is not None else (roof.kv_cache_bytes if roof is not None else None),
        "decode_mbu": roof.decode_mbu if roof is not None else None,
        "prefill_mfu": roof.prefill_mfu if roof is not None else None,
    }
