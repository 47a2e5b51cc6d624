"""tfbench's records in transformers benchmark_v2's formats: its local results file and the rows
it pushes to a Hub dataset (docs/compat/benchmark_v2.md, sections 5 to 7).

Every value is computed from tfbench's raw data with benchmark_v2's definitions: ttft is the
earliest first token over the requests of an iteration, the inter-token latency of plain generate
is (end of the call - first token) / n, that of continuous batching the mean over requests of
(last - first token) / (n - 1). Times are seconds. Pure functions, except write_results_file.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.config.benchmark_v2 import V2Combo, V2Matrix, combo_of, config_dict, config_hash
from bench.results.outputs import OUTPUT_TOKENS_KEPT
from bench.results.records import CellRecord, RunMeta, TimedRun
from bench.results.store import atomic_write_text

FULL_DIR = "full_results"
SUMMARIZED_DIR = "summarized_results"
# tfbench keeps the tokens of one timed run per cell, its last (the record's output), and decodes
# their first OUTPUT_TOKENS_KEPT in the worker: that run gets "(rows, n) | text"; the others, whose
# tokens are not kept, their shape alone. A record without a decoded text leaves the list empty.
DECODED_OUTPUTS_NOTE = (
    "shape_and_decoded_outputs: '(rows, n) | text' for each cell's last timed run, the first "
    f"{OUTPUT_TOKENS_KEPT} new tokens decoded; the shape alone for its other runs, whose tokens are not kept"
)

# Arrays that hold only plain decimals, laid out one per line by json.dumps(indent=4): benchmark_v2
# puts them on one line (compact_json_numeric_arrays), and so do we, for files that read alike.
_NUMERIC_ARRAY = re.compile(r"\[\s*\n\s*((?:\d+(?:\.\d+)?\s*,\s*)*\d+(?:\.\d+)?)\s*\n\s*\]", re.DOTALL)


def _iteration(run: TimedRun) -> tuple[float, float, float] | None:
    """(e2e, ttft, inter-token latency) of one timed run, by benchmark_v2's definitions."""
    e2e = run.e2e_latency
    if e2e is None:
        return None
    if run.requests:
        rows = [r.token_times for r in run.requests if len(r.token_times) > 1]
        if not rows:
            return None
        ttft = min(r[0] for r in rows)
        itl = statistics.fmean((r[-1] - r[0]) / (len(r) - 1) for r in rows)
        return e2e, ttft, itl
    times = run.token_times or []
    if not times:
        return None
    return e2e, times[0], (e2e - times[0]) / len(times)


def _timestamps(run: TimedRun) -> list[list[float]]:
    """One row per request, seconds since the call started; plain generate: one row, the n token
    times and then the end of the call (benchmark_v2's streamer records its end() too)."""
    if run.requests:
        return [list(r.token_times) for r in run.requests]
    return [[*(run.token_times or []), float(run.e2e_latency or 0.0)]]


def measurements(record: CellRecord, full: bool) -> dict[str, Any]:
    """BenchmarkResult.to_dict(summarized=not full) of a cell: one entry per timed run."""
    iterations = [(run, it) for run in record.runs if (it := _iteration(run)) is not None]
    if not record.ok or not iterations:
        return {
            "e2e_latency": [],
            "time_to_first_token": [],
            "inter_token_latency": [],
            "shape_and_decoded_outputs": [],
            "gpu_metrics": None,
            "timestamps": [] if full else None,
        }
    gpu_metrics = None
    monitored = bool((record.settings or {}).get("gpu_monitoring", True))
    if full and monitored and record.cell.device == "cpu":
        # What benchmark_v2's monitor reports on a machine without a GPU, once per iteration.
        empty = {"utilization": [], "memory_used": [], "timestamps": [], "timestamp_0": 0.0}
        gpu_metrics = [{**empty, "monitoring_status": "no_gpus_available"} for _ in iterations]
    return {
        "e2e_latency": [it[0] for _, it in iterations],
        "time_to_first_token": [it[1] for _, it in iterations],
        "inter_token_latency": [it[2] for _, it in iterations],
        "shape_and_decoded_outputs": _decoded(record, len(iterations)),
        "gpu_metrics": gpu_metrics,
        "timestamps": [_timestamps(run) for run, _ in iterations] if full else None,
    }


def _decoded(record: CellRecord, runs: int) -> list[str]:
    """benchmark_v2's f"{shape} | {decoded}" per timed run: the text where it is known, the last
    run's only (see DECODED_OUTPUTS_NOTE); [] for a record without a decoded output."""
    out = record.output
    if out is None or out.text is None or runs == 0:
        return []
    shape = f"({record.cell.batch_size}, {out.n})"
    return [shape] * (runs - 1) + [f"{shape} | {out.text}"]


def hardware_info(meta: RunMeta) -> dict[str, Any]:
    env = meta.environment
    gpu = env.gpus[0] if env is not None and env.gpus and meta.device != "cpu" else None
    memory = gpu.memory_total_bytes if gpu is not None else None
    return {
        "gpu_name": gpu.name if gpu is not None else None,
        "gpu_memory_total_gb": memory / 1024**3 if memory else None,
        "python_version": env.python if env is not None else None,
        "torch_version": meta.packages().get("torch"),
    }


def metadata(
    record: CellRecord,
    meta: RunMeta,
    model_id: str,
    branch: str | None,
    commit_id: str | None,
    commit_message: str | None,
) -> dict[str, Any]:
    """BenchmarkMetadata.to_dict() of a cell: when it ended, the commit, the hardware, success."""
    return {
        "model_id": model_id,
        "timestamp": _utc_iso(record.finished_at or meta.started_at),
        "branch_name": branch,
        "commit_id": commit_id,
        "commit_message": commit_message,
        "hardware_info": hardware_info(meta),
        "success": record.ok,
    }


def _utc_iso(value: str | None) -> str | None:
    """benchmark_v2's form of a UTC time: isoformat with microseconds and +00:00."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat(timespec="microseconds")
    except ValueError:
        return value


def _key(combo: V2Combo, b: int, s: int, n: int) -> tuple[Any, ...]:
    return (combo, b, s, n)


def entries(
    matrix: V2Matrix,
    records: Sequence[CellRecord],
    meta: RunMeta,
    model_id: str,
    branch: str | None,
    commit_id: str | None,
    commit_message: str | None,
    full: bool = False,
) -> dict[str, dict[str, Any]]:
    """{config_hash: {metadata, measurements, config}} in benchmark_v2's run order, for the
    configs whose cell has a record (a cell not reached yet is left out, as benchmark_v2 leaves
    out the configs it has not run)."""
    by_key = {
        _key(combo_of(r.cell), r.cell.batch_size, r.cell.sequence_length, r.cell.num_tokens_to_generate): r
        for r in records
    }
    out: dict[str, dict[str, Any]] = {}
    for shape, combo in matrix.entries():
        record = by_key.get(_key(combo, shape.batch_size, shape.sequence_length, shape.num_tokens))
        if record is None or record.status in ("running", "partial", "interrupted"):
            continue
        config = config_dict(combo, shape, matrix.tp)
        out[config_hash(config)] = {
            "metadata": metadata(record, meta, model_id, branch, commit_id, commit_message),
            "measurements": measurements(record, full),
            "config": config,
        }
    return out


def results_text(data: dict[str, Any]) -> str:
    """json.dumps(indent=4) with numeric arrays on one line, as benchmark_v2 writes its file."""

    def one_line(match: re.Match[str]) -> str:
        return "[" + re.sub(r"\s+", " ", match.group(1)).strip() + "]"

    return _NUMERIC_ARRAY.sub(one_line, json.dumps(data, indent=4, default=str))


def file_timestamp(started_at: str | None) -> str:
    """The %Y%m%d_%H%M%S of a run's start in local time, as benchmark_v2 names its files; the
    run's own start, so that a resumed run rewrites the same file."""
    try:
        when = datetime.fromisoformat((started_at or "").replace("Z", "+00:00")).astimezone()
    except ValueError:
        when = datetime.now()
    return when.strftime("%Y%m%d_%H%M%S")


def results_path(output: Path, model_id: str, timestamp: str) -> Path:
    """<output_dir>/<model_id with / as _>/<same>_benchmark_<timestamp>.json (section 6)."""
    name = model_id.replace("/", "_")
    return output / name / f"{name}_benchmark_{timestamp}.json"


def write_results_file(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, results_text(data))


def _sorted_keys(value: Any) -> Any:
    # Rows pass through datasets.Dataset.from_list upstream, which sorts every mapping's keys.
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


def hub_rows(data: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows benchmark_v2 pushes: {benchmark_config_hash, config, measurements, metadata}."""
    return [
        _sorted_keys(
            {
                "benchmark_config_hash": key,
                "config": entry["config"],
                "measurements": entry["measurements"],
                "metadata": entry["metadata"],
            }
        )
        for key, entry in data.items()
    ]


def hub_files(
    full: dict[str, dict[str, Any]], summarized: dict[str, dict[str, Any]], timestamp: str
) -> dict[str, bytes]:
    """Path in the dataset -> content: the full and summarized JSONL files of one run, one JSON
    row per line, no final newline (section 7)."""

    def jsonl(rows: list[dict[str, Any]]) -> bytes:
        return "\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode()

    name = f"benchmark_run_{timestamp}.jsonl"
    return {
        f"{FULL_DIR}/{name}": jsonl(hub_rows(full)),
        f"{SUMMARIZED_DIR}/{name}": jsonl(hub_rows(summarized)),
    }
