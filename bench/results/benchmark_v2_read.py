"""transformers' benchmark_v2 results, read as tfbench runs: its local results file and the JSONL
files it pushes to a Hub dataset (docs/compat/benchmark_v2.md, sections 5 to 7) become a Run of
typed records, so that compare, report and history take an old benchmark_v2 run as the baseline.

Each config of the file becomes the cell `tfbench v2` plans for the same model and config (the
same defining fields, dtype bfloat16, device cuda where benchmark_v2 saw a GPU), so the cell ids
match and compare pairs the cells. Every config is one cell measured in one process: benchmark_v2
measures all its configs in one process, so nothing says how its numbers vary between processes.

What is rebuilt, and why:
- benchmark_v2's inter-token latency of plain generate is (t_end - t_first) / n, with t_end the
  streamer's end() call after the last token; tfbench's tpot is (e2e - ttft) / (n - 1). So tpot is
  rebuilt from e2e and ttft, and the throughputs with run_metrics' definitions; where the full
  form carries the per-token timestamps, the run is rebuilt from them exactly as a worker would.
- Continuous batching: benchmark_v2's ttft is the earliest first token over the requests and its
  ITL the mean over requests of (last - first) / (n - 1), i.e. the mean of tfbench's per-request
  tpot. With per-request timestamps (full rows) a run holds its requests, as a worker writes it;
  without them (the summarized form, the normal local file) the run holds those two values.
- benchmark_v2 computes its timestamps, ttft and ITL in float32 (e2e is float64): they are
  rounded to float32 steps of perf_counter values, which is coarse on a host up for long.

A config benchmark_v2 did not record as successful is a failed cell. A config tfbench cannot
represent (bench.config.benchmark_v2.parse_config refuses it) or that is malformed is left out and
named in Run.skipped, never fatal; a file that is not of benchmark_v2's shape is a RunFileError
(exit 2) naming it. Pure functions apart from reading the file; no torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.config.benchmark_v2 import DTYPE, parse_config
from bench.errors import UserError
from bench.plan.matrix import Cell, cell_id, cell_name
from bench.results.records import CellRecord, RunMeta, ValidationError, describe_error, status_counts
from bench.results.stats import cell_stats, run_metrics, timing_metrics
from bench.results.store import Run, RunFileError, Skipped

SOURCE = "benchmark_v2"  # the "source" of a converted RunMeta and CellRecord
# The folders of the files benchmark_v2 pushes to a Hub dataset (section 7).
HUB_FULL = "full_results"
HUB_SUMMARIZED = "summarized_results"
FAILED_REASON = "benchmark_v2 recorded this config as not successful"
EXPECTED = (
    "expected a JSON object {config hash (64 hex digits): {metadata, measurements, config}}, "
    "as benchmark_v2 writes <model>_benchmark_<time>.json"
)
EXPECTED_ROWS = (
    "expected one JSON object per line with benchmark_config_hash, config, measurements and "
    "metadata, as benchmark_v2 pushes benchmark_run_<time>.jsonl"
)
# BenchmarkConfig.from_dict's defaults (section 2).
DEFAULTS = {
    "batch_size": 1,
    "sequence_length": 128,
    "num_tokens_to_generate": 128,
    "warmup_iterations": 5,
    "measurement_iterations": 20,
    "gpu_monitoring": False,
}
SERIES = ("e2e_latency", "time_to_first_token", "inter_token_latency")
_HASH = re.compile(r"[0-9a-fA-F]{64}\Z")
# The head of a results file: checked before parsing a large JSON file that is probably not one.
_HEAD = re.compile(rb'\A\s*\{\s*"[0-9a-fA-F]{64}"\s*:')
_HEAD_BYTES = 512


class EntryError(Exception):
    """One config of a file that cannot become a cell: left out, with this reason."""


@dataclass
class _Converted:
    """What the entries of one file became, before the RunMeta is built."""

    records: list[CellRecord] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- recognizing


def _measurements_of(entry: dict[str, Any]) -> Any:
    # The oldest runner wrote "measures" (docs/compat/benchmark_v2.md, section 6).
    return entry["measurements"] if "measurements" in entry else entry.get("measures")


def _shape_problem(data: Any) -> str | None:
    """Why `data` is not the top level of a results file, or None."""
    if not isinstance(data, dict):
        return f"its top level is a JSON {type(data).__name__}, not an object"
    if not data:
        return "it is an empty object"
    for key, entry in data.items():
        if not _HASH.match(key):
            return f"key {key[:80]!r} is not a config hash (64 hex digits)"
        if not isinstance(entry, dict):
            return f"the value of {key[:12]} is not an object"
        missing = [k for k in ("metadata", "config") if not isinstance(entry.get(k), dict)]
        if not isinstance(_measurements_of(entry), dict):
            missing.append("measurements")
        if missing:
            return f"config {key[:12]} has no {', '.join(missing)} object"
    return None


def is_results_file(path: str | Path) -> bool:
    """Whether `path` is a benchmark_v2 results file: a .json whose top level is an object of
    config hashes (64 hex digits), each holding metadata, measurements (or measures) and config."""
    p = Path(path)
    try:
        if p.suffix != ".json" or not p.is_file():
            return False
        with open(p, "rb") as f:
            if not _HEAD.match(f.read(_HEAD_BYTES)):
                return False
        data = json.loads(p.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return _shape_problem(data) is None


def from_benchmark_v2(meta: RunMeta) -> bool:
    """Whether a run was read from benchmark_v2 results (by this module)."""
    return (meta.model_extra or {}).get("source") == SOURCE


# ------------------------------------------------------------------------------- reading


def read_results_file(path: str | Path) -> Run:
    """A benchmark_v2 local results file as a Run (run id: the file's stem). RunFileError (exit 2)
    naming the file when it cannot be read or is not of that shape."""
    p = Path(path)
    try:
        data = json.loads(p.read_bytes())
    except OSError as exc:
        raise RunFileError(f"{p} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise RunFileError(f"{p} is not a benchmark_v2 results file (not JSON: {exc}); {EXPECTED}") from None
    problem = _shape_problem(data)
    if problem is not None:
        raise RunFileError(f"{p} is not a benchmark_v2 results file ({problem}); {EXPECTED}")
    items = [
        (key, entry["metadata"], _measurements_of(entry), entry["config"]) for key, entry in data.items()
    ]
    return _to_run(items, p, p.stem, str(p))


def read_hub_file(path: str | Path, run_id: str | None = None, source: str | None = None) -> Run:
    """A JSONL file benchmark_v2 pushed (full_results/ or summarized_results/
    benchmark_run_<ts>.jsonl) as a Run. run_id defaults to the file's stem, source (where the file
    came from, e.g. hub:ORG/NAME/<path>) to the path. RunFileError naming it when it is not one."""
    p = Path(path)
    where = source or str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{where} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):  # no final newline upstream
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise RunFileError(f"{where} line {number} is not JSON ({exc}); {EXPECTED_ROWS}") from None
        key = row.get("benchmark_config_hash") if isinstance(row, dict) else None
        parts = [row.get(k) for k in ("metadata", "measurements", "config")] if isinstance(row, dict) else []
        if not isinstance(key, str) or not _HASH.match(key) or not all(isinstance(x, dict) for x in parts):
            raise RunFileError(f"{where} line {number} is not a benchmark_v2 row; {EXPECTED_ROWS}")
        items.append((key, *parts))
    if not items:
        raise RunFileError(f"{where} holds no rows; {EXPECTED_ROWS}")
    return _to_run(items, p, run_id or p.stem, where)


# ------------------------------------------------------------------------------- one entry


def _int(config: dict[str, Any], key: str, least: int) -> int:
    value = config.get(key, DEFAULTS[key])
    if value is None:
        value = DEFAULTS[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise EntryError(f"{key} = {json.dumps(value)}: expected an integer >= {least}")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(measurements: dict[str, Any]) -> tuple[list[float], list[float], list[float]]:
    """e2e, ttft and ITL, one entry per iteration, checked."""
    out = []
    for key in SERIES:
        values = measurements.get(key)
        if values is None:
            values = []
        if not isinstance(values, list) or not all(_number(v) for v in values):
            raise EntryError(f"measurements.{key} is not a list of numbers")
        out.append([float(v) for v in values])
    if len({len(v) for v in out}) > 1:
        lengths = ", ".join(f"{k} {len(v)}" for k, v in zip(SERIES, out))
        raise EntryError(f"the measurements have different numbers of iterations ({lengths})")
    return out[0], out[1], out[2]


def _rows(timestamps: Any, i: int) -> list[list[float]] | None:
    """Iteration i's requests x columns timestamps, or None where the entry has none usable."""
    if not isinstance(timestamps, list) or i >= len(timestamps):
        return None
    rows = timestamps[i]
    if not isinstance(rows, list) or not rows:
        return None
    if not all(isinstance(r, list) and r and all(_number(v) for v in r) for r in rows):
        return None
    return [[float(v) for v in r] for r in rows]


def _generate_run(
    e2e: float, ttft: float, rows: list[list[float]] | None, b: int, s: int, n: int
) -> dict[str, Any]:
    # benchmark_v2's streamer row: n token times, then its end() call (n + 1 columns).
    if rows is not None and len(rows) == 1 and len(rows[0]) in (n, n + 1):
        run = run_metrics(e2e, rows[0][:n], b, s)
        run.pop("itl")  # derivable from token_times, as a worker leaves it out
        run["token_times"] = rows[0][:n]
        return run
    return timing_metrics(e2e, ttft, n, b, s)


def _cb_run(
    e2e: float, ttft: float, itl: float, rows: list[list[float]] | None, b: int, n: int
) -> dict[str, Any]:
    run: dict[str, Any] = {"e2e_latency": e2e, "e2e_throughput": b * n / e2e if e2e > 0 else None}
    if rows is not None and all(len(r) == n for r in rows):
        # One row per request, as bench.worker.generate.measure_continuous_batching records them.
        run["requests"] = [
            {
                "e2e_latency": r[-1],
                "ttft": r[0],
                "tpot": (r[-1] - r[0]) / (n - 1) if n > 1 else None,
                "token_times": r,
            }
            for r in rows
        ]
    else:
        run.update(ttft=ttft, tpot=itl)  # the earliest first token; the mean per-request tpot
    return run


def _entry(
    key: str,
    metadata: dict[str, Any],
    measurements: dict[str, Any],
    config: dict[str, Any],
    index: int,
    where: str,
) -> tuple[dict[str, Any], list[str]]:
    """One config as a cell record's fields, and parse_config's notes; EntryError when it cannot be one."""
    try:
        combo, _, notes = parse_config(config, where)
    except UserError as exc:
        raise EntryError(str(exc).removeprefix(f"{where}: ")) from None
    b = _int(config, "batch_size", 1)
    s = _int(config, "sequence_length", 1)
    n = _int(config, "num_tokens_to_generate", 1)
    model = metadata.get("model_id")
    if not isinstance(model, str) or not model:
        raise EntryError("metadata.model_id is missing: the model of the cell is not known")
    hardware = metadata.get("hardware_info") if isinstance(metadata.get("hardware_info"), dict) else {}
    device = "cuda" if hardware.get("gpu_name") else "cpu"
    mode = combo.compile
    defining = {
        "model": model,
        "revision": None,
        "model_config": {},
        "dtype": DTYPE,
        "device": device,
        "attn_implementation": combo.attn_implementation,
        "compile": mode,
        "compile_fullgraph": combo.fullgraph if mode else False,
        "compile_dynamic": combo.dynamic if mode else None,
        "kernelize": combo.kernelize,
        "continuous_batching": combo.continuous_batching,
        "batch_size": b,
        "sequence_length": s,
        "num_tokens_to_generate": n,
    }
    cid = cell_id(defining)
    name = cell_name(combo.attn_implementation, mode, combo.kernelize, combo.continuous_batching, b, s, n)
    cell = Cell(index=index, cell_id=cid, name=name, **defining)
    e2e, ttft, itl = _series(measurements)
    timestamps = measurements.get("timestamps")
    runs = []
    for i, (e, t, gap) in enumerate(zip(e2e, ttft, itl)):
        rows = _rows(timestamps, i)
        run = (
            _cb_run(e, t, gap, rows, b, n)
            if combo.continuous_batching
            else _generate_run(e, t, rows, b, s, n)
        )
        runs.append({**run, "process": 0})
    ok = metadata.get("success", True) is True and bool(runs)
    reason = None
    if not ok:
        reason = (
            FAILED_REASON
            if metadata.get("success", True) is not True
            else "benchmark_v2 measured no iteration"
        )
    monitoring = config.get("gpu_monitoring", DEFAULTS["gpu_monitoring"])
    record = {
        "run_id": None,
        "cell_id": cid,
        "status": "ok" if ok else "failed",
        "reason": reason,
        "cell": cell.to_dict(),
        "settings": {
            "warmup_iterations": _int(config, "warmup_iterations", 0),
            "measurement_iterations": _int(config, "measurement_iterations", 0),
            "processes": 1,
            "gpu_monitoring": bool(monitoring),
        },
        "finished_at": metadata.get("timestamp") if isinstance(metadata.get("timestamp"), str) else None,
        "runs": runs if ok else [],
        "stats": cell_stats(runs) if ok else {},
        "processes": [{"index": 0, "runs": len(runs)}] if ok else [],
        "source": SOURCE,
        "benchmark_v2": {"config_hash": key, "name": config.get("name")},
    }
    return record, notes


def _to_run(items: list[tuple[str, Any, Any, Any]], path: Path, run_id: str, where: str) -> Run:
    """The entries (hash, metadata, measurements, config) of one file, as a Run."""
    done = _Converted()
    seen: dict[str, str] = {}  # cell id -> the label of the config that made it
    for key, metadata, measurements, config in items:
        label = f"config {key[:12]}" + (f" ({config['name']})" if isinstance(config.get("name"), str) else "")
        try:
            fields, notes = _entry(key, metadata, measurements, config, len(done.records), label)
            fields["run_id"] = run_id
            record = CellRecord.model_validate(fields)
        except EntryError as exc:
            done.skipped.append(Skipped(path, f"{label}: {exc}: tfbench cannot read it as a cell"))
            continue
        except ValidationError as exc:
            done.skipped.append(Skipped(path, describe_error(exc, f"{label}: not a cell")))
            continue
        if record.cell_id in seen:
            done.skipped.append(
                Skipped(path, f"{label} measures the same cell as {seen[record.cell_id]} (kept)")
            )
            continue
        seen[record.cell_id] = label
        done.records.append(record)
        done.metadata.append(metadata)
        done.notes += notes
    meta = _run_meta(done, items[0][1], run_id, where)
    return Run(path=path, meta=meta, cells={r.cell_id: r for r in done.records}, skipped=done.skipped)


def _earliest(stamps: list[Any]) -> str | None:
    parsed = []
    for stamp in stamps:
        if isinstance(stamp, str):
            try:
                parsed.append((datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp(), stamp))
            except ValueError:
                continue
    return min(parsed)[1] if parsed else None


def _uniform(records: list[CellRecord], key: str) -> Any:
    values = {json.dumps((r.settings or {}).get(key)) for r in records}
    return (records[0].settings or {}).get(key) if len(values) == 1 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _run_meta(done: _Converted, fallback: dict[str, Any], run_id: str, where: str) -> RunMeta:
    """The run.json of a converted file; `fallback` is the first entry's metadata, for a file none
    of whose entries became a cell."""
    first = done.metadata[0] if done.metadata else fallback
    hardware = first.get("hardware_info") if isinstance(first.get("hardware_info"), dict) else {}
    gpu = _text(hardware.get("gpu_name"))
    memory = hardware.get("gpu_memory_total_gb")
    config: dict[str, Any] = {"model": _text(first.get("model_id"))}
    # The settings compare checks, where every config of the file shares them (the flags set them).
    for key in ("warmup_iterations", "measurement_iterations", "gpu_monitoring"):
        if done.records and _uniform(done.records, key) is not None:
            config[key] = _uniform(done.records, key)
    data = {
        "run_id": run_id,
        "run_name": SOURCE,
        "status": "finished",
        "started_at": _earliest([m.get("timestamp") for m in done.metadata]),
        "config": config,
        "plan": {
            "capabilities": {"device": "cuda" if gpu else "cpu", "flash_attn": None, "kernels": None},
            "cells": [r.cell.to_dict() for r in done.records],
            "warnings": [],
        },
        "environment": {
            "python": _text(hardware.get("python_version")),
            "packages": {"torch": _text(hardware.get("torch_version"))},
            "gpus": [{"name": gpu, "memory_total_bytes": int(memory * 1024**3) if _number(memory) else None}]
            if gpu
            else [],
            "cpu": None,
        },
        "measured_commit": {
            "sha": _text(first.get("commit_id")),
            "source": "benchmark_v2 metadata",
            "branch": _text(first.get("branch_name")),
        },
        "counts": status_counts(done.records),
        "source": SOURCE,
        "source_file": where,
        "notes": sorted(set(done.notes)),
    }
    try:
        return RunMeta.model_validate(data)
    except ValidationError as exc:
        raise RunFileError(
            describe_error(exc, f"{where}: its metadata is not as benchmark_v2 writes it")
        ) from None
