"""The results layout on disk, written atomically so that a kill at any instant leaves no half file.

    <output>/<run_id>/run.json              run metadata, config, plan, environment
    <output>/<run_id>/cells/<cell_id>.json  one per cell, written when its result is known
    <output>/<run_id>/summary.jsonl         one flat row per cell, for pandas and datasets
    <output>/<run_id>/logs/<cell_id>.log    the worker's stdout and stderr
    <output>/<run_id>/work/<cell_id>.<attempt>/  the worker's scratch space (compile caches), removed after
    <output>/<run_id>/shards/<i>-of-<N>/    shard i of a sharded run, laid out as above; the
                                            merged run is written to <output>/<run_id>/

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .stats import METRICS, STAT_NAMES

AXES = (
    "model",
    "dtype",
    "device",
    "attn_implementation",
    "compile",
    "kernelize",
    "continuous_batching",
    "batch_size",
    "sequence_length",
    "num_tokens_to_generate",
)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity; store them as null so any reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary file beside `path`, fsync, rename over it, fsync the directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(
        path, json.dumps(_finite(data), indent=1, default=_json_default, allow_nan=False) + "\n"
    )


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class RunDir:
    def __init__(self, output: str | os.PathLike[str], run_id: str, shard: str | None = None):
        self.output = Path(output)
        self.run_id = run_id
        self.shard = shard
        # A shard of a run lives inside the run's directory; the merge writes the run beside it.
        self.path = self.output / run_id / "shards" / shard if shard else self.output / run_id
        self.cells = self.path / "cells"
        self.logs = self.path / "logs"
        self.work = self.path / "work"
        self.run_json = self.path / "run.json"
        self.summary = self.path / "summary.jsonl"

    def create(self) -> None:
        for d in (self.path, self.cells, self.logs, self.work):
            d.mkdir(parents=True, exist_ok=True)

    def cell_path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.json"

    def log_path(self, cell_id: str) -> Path:
        return self.logs / f"{cell_id}.log"

    def scratch(self, cell_id: str) -> Path:
        d = self.work / cell_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def drop_scratch(self, cell_id: str) -> None:
        shutil.rmtree(self.work / cell_id, ignore_errors=True)

    def write_run(self, data: dict[str, Any]) -> None:
        atomic_write_json(self.run_json, data)

    def write_cell(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.cell_path(record["cell_id"]), record)

    def read_cells(self) -> list[dict[str, Any]]:
        return [read_json(p) for p in sorted(self.cells.glob("*.json"))]

    def write_summary(self, records: Iterable[dict[str, Any]]) -> None:
        rows = [summary_row(self.run_id, r) for r in sorted(records, key=lambda r: r["cell"]["index"])]
        atomic_write_text(
            self.summary, "".join(json.dumps(_finite(row), allow_nan=False) + "\n" for row in rows)
        )


def summary_columns() -> list[str]:
    cols = ["run_id", "cell_id", "name", "status", "reason", *AXES]
    cols += [f"{m}_{s}" for m in METRICS for s in STAT_NAMES]
    cols += ["peak_memory_bytes", "load_time_s", "warmup_time_s", "worker_pid", "attempt", "shard"]
    cols += [*GPU_COLUMNS]
    return cols


def summary_row(run_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """One flat row with the same columns for every cell, so datasets/pandas infer one schema."""
    cell = record["cell"]
    stats = record.get("stats") or {}
    row: dict[str, Any] = {
        "run_id": run_id,
        "cell_id": record["cell_id"],
        "name": cell["name"],
        "status": record["status"],
        "reason": record.get("reason"),
    }
    for axis in AXES:
        row[axis] = cell[axis]
    for metric in METRICS:
        mstats = stats.get(metric) or {}
        for stat in STAT_NAMES:
            value = mstats.get(stat)
            row[f"{metric}_{stat}"] = (0 if value is None else value) if stat == "n" else value
    memory = record.get("memory") or {}
    row["peak_memory_bytes"] = memory.get("peak_bytes")
    row["load_time_s"] = record.get("load_time_s")
    row["warmup_time_s"] = record.get("warmup_time_s")
    row["worker_pid"] = record.get("worker_pid")
    row["attempt"] = record.get("attempt") or (0 if record["status"] == "skipped" else 1)
    row["shard"] = record.get("shard")
    row.update(gpu_row(record))
    return row


# GPU telemetry and roofline columns of summary.jsonl (null where not measured, e.g. on the CPU).
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


def gpu_row(record: dict[str, Any]) -> dict[str, Any]:
    telemetry = record.get("gpu_telemetry") or {}
    first = (telemetry.get("devices") or [{}])[0].get("metrics") or {}
    roof = record.get("roofline") or {}
    memory = record.get("memory") or {}

    def mean(metric: str) -> Any:
        return (first.get(metric) or {}).get("mean")

    return {
        "energy_per_token_j_p50": (telemetry.get("energy_per_token_j") or {}).get("p50"),
        "energy_per_run_j_p50": (telemetry.get("energy_per_run_j") or {}).get("p50"),
        "gpu_util_pct_mean": mean("gpu_util_pct"),
        "power_w_mean": mean("power_w"),
        "sm_clock_mhz_mean": mean("sm_clock_mhz"),
        "nvml_used_peak_bytes": memory.get("nvml_used_peak_bytes"),
        "kv_cache_bytes": memory.get("kv_cache_bytes", roof.get("kv_cache_bytes")),
        "decode_mbu": roof.get("decode_mbu"),
        "prefill_mfu": roof.get("prefill_mfu"),
    }
