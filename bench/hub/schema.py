"""The layout of a Hub dataset of tfbench runs: its two formats, their columns and types, the
rows of one run, and their inverse (a row back to a cell record).

    summarized/<run_id>.jsonl   stats only: the rows of summary.jsonl, one per cell
    full/<run_id>.jsonl         every raw measurement: one row per cell, the full cell record
    runs/<run_id>.json          the run's run.json as written (config, plan, environment)
    README.md                   the dataset card (bench.hub.card): two configs, "summarized"
                                (default) and "full", their data_files globs and their features

These are the two formats of transformers' benchmark_v2. Every row of both formats starts with
the same context columns (run, measured commit, branch, tfbench version, hardware, torch and
transformers versions), so that the history of many runs can be filtered by commit and hardware.
Every file of one format has the same columns with the same types: nested values whose shape
varies are JSON strings, numbers are coerced to the declared type, and the card declares the
types so that `datasets.load_dataset(repo, "full")` and the Hub's dataset viewer read all runs
without custom code (a column that is null in every row of one file would otherwise be typed
`null` there and clash with another file).

A "full" row holds everything of its cell record, so that the record can be read back from it
(row_record): `tfbench compare hub:ORG/NAME@REF` and `tfbench history --repo` read pushed runs so.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from bench.results.records import METRICS, RUN_METRICS, STAT_NAMES, CellRecord, Environment, hardware_label
from bench.results.summary import GPU_COLUMNS, gpu_row, summary_columns

CONFIG_SUMMARIZED = "summarized"
CONFIG_FULL = "full"

# Column types. "json" columns hold a JSON document as a string (shapes that vary between cells).
#   ("list", t) is a list of t; ("list", ("list", t)) a list of lists.
ColumnType = Any
STRING, INT, FLOAT, BOOL, JSON = "string", "int64", "float64", "bool", "json"

CONTEXT_COLUMNS: tuple[tuple[str, ColumnType], ...] = (
    ("run_id", STRING),
    ("run_name", STRING),
    ("run_status", STRING),
    ("run_started_at", STRING),
    ("run_finished_at", STRING),
    ("schema_version", INT),
    ("tfbench_version", STRING),
    ("measured_commit", STRING),
    ("measured_commit_source", STRING),
    ("branch", STRING),
    ("hardware", STRING),
    ("gpu_name", STRING),
    ("gpu_names", ("list", STRING)),
    ("gpu_count", INT),
    ("cpu", STRING),
    ("cpu_count", INT),
    ("hostname", STRING),
    ("driver_version", STRING),
    ("cuda_driver_version", STRING),
    ("python_version", STRING),
    ("torch_version", STRING),
    ("transformers_version", STRING),
)

# Types of the summary.jsonl columns that are not <metric>_<stat> (those are float64, _n int64).
_SUMMARY_TYPES: dict[str, ColumnType] = {
    "run_id": STRING,
    "cell_id": STRING,
    "name": STRING,
    "status": STRING,
    "reason": STRING,
    "model": STRING,
    "dtype": STRING,
    "device": STRING,
    "attn_implementation": STRING,
    "compile": STRING,
    "kernelize": BOOL,
    "continuous_batching": BOOL,
    "quantization": STRING,
    "batch_size": INT,
    "sequence_length": INT,
    "num_tokens_to_generate": INT,
    "peak_memory_bytes": INT,
    "load_time_s": FLOAT,
    "warmup_time_s": FLOAT,
    "worker_pid": INT,
    "attempt": INT,
    "shard": STRING,
    "energy_per_token_j_p50": FLOAT,
    "energy_per_run_j_p50": FLOAT,
    "gpu_util_pct_mean": FLOAT,
    "power_w_mean": FLOAT,
    "sm_clock_mhz_mean": FLOAT,
    "nvml_used_peak_bytes": INT,
    "kv_cache_bytes": INT,
    "decode_mbu": FLOAT,
    "prefill_mfu": FLOAT,
    "output_n": INT,
    "output_sha256": STRING,
    "output_degenerate": STRING,
    "agreement_reference": STRING,
    "agreement_match_rate": FLOAT,
    "agreement_diverges_at": INT,
}


def summary_column_type(name: str) -> ColumnType:
    """The type of a summary.jsonl column; a column added to store.summary_columns() later and not
    listed here is typed from its name (a string when nothing tells)."""
    if name in _SUMMARY_TYPES:
        return _SUMMARY_TYPES[name]
    for metric in METRICS:
        for stat in STAT_NAMES:
            if name == f"{metric}_{stat}":
                return INT if stat == "n" else FLOAT
    if name.endswith("_process_p50s"):
        return ("list", FLOAT)
    if name == "processes":
        return INT
    if name.endswith(("_bytes", "_count", "_pid")):
        return INT
    if name.endswith(("_s", "_j", "_w", "_pct", "_mhz", "_mean", "_p50", "_p90", "_mbu", "_mfu")):
        return FLOAT
    return STRING


# Per-run scalar values of the raw runs, as one list per column (null where a run lacks the key).
RUN_SCALARS = (*RUN_METRICS, "e2e_latency_device", "energy_j", "energy_per_token_j")
# Keys of a cell record covered by columns of their own in the "full" format.
CELL_FIELDS: tuple[tuple[str, str, ColumnType], ...] = (
    # (key in record["cell"], column, type)
    ("index", "cell_index", INT),
    ("name", "name", STRING),
    ("model", "model", STRING),
    ("revision", "revision", STRING),
    ("model_config", "model_config", JSON),
    ("dtype", "dtype", STRING),
    ("device", "device", STRING),
    ("attn_implementation", "attn_implementation", STRING),
    ("compile", "compile", STRING),
    ("compile_fullgraph", "compile_fullgraph", BOOL),
    ("compile_dynamic", "compile_dynamic", BOOL),
    ("kernelize", "kernelize", BOOL),
    ("continuous_batching", "continuous_batching", BOOL),
    ("quantization", "quantization", STRING),  # null in rows written before it: "none"
    ("batch_size", "batch_size", INT),
    ("sequence_length", "sequence_length", INT),
    ("num_tokens_to_generate", "num_tokens_to_generate", INT),
    ("skip_reason", "skip_reason", STRING),
)
_RECORD_SCALARS: tuple[tuple[str, ColumnType], ...] = (
    ("status", STRING),
    ("reason", STRING),
    ("error", JSON),
    ("attempt", INT),
    ("attempts", JSON),
    ("shard", STRING),
    ("worker_pid", INT),
    ("log", STRING),
    ("started_at", STRING),
    ("finished_at", STRING),
    ("duration_s", FLOAT),
    ("effective_attn_implementation", STRING),
    ("parameters", INT),
    ("compiled_graphs", INT),
    ("load_time_s", FLOAT),
    ("warmup_time_s", FLOAT),
    ("setup_time_s", FLOAT),
    ("settings", JSON),
    ("inputs", JSON),
)
_RECORD_NESTED = (
    "memory",
    "gpu_telemetry",
    "roofline",
    "warmup_check",
    "isolation",
    "worker_environment",
    "continuous_batching_config",
)
# Record keys that need no column: the same in every row of a run, or spread over columns.
_RECORD_COVERED = {"schema_version", "run_id", "cell_id", "cell", "runs", "stats"}


def full_columns() -> list[tuple[str, ColumnType]]:
    cols: list[tuple[str, ColumnType]] = [*CONTEXT_COLUMNS, ("cell_id", STRING)]
    cols += [(col, typ) for _, col, typ in CELL_FIELDS]
    cols += list(_RECORD_SCALARS)
    cols += [(f"runs_{key}", ("list", FLOAT)) for key in RUN_SCALARS]
    cols.append(("runs_token_times", ("list", ("list", FLOAT))))
    cols.append(("runs_other", JSON))
    cols += [(f"{m}_{s}", INT if s == "n" else FLOAT) for m in METRICS for s in STAT_NAMES]
    cols.append(("peak_memory_bytes", INT))
    cols += [(c, _SUMMARY_TYPES[c]) for c in GPU_COLUMNS]
    cols += [(key, JSON) for key in _RECORD_NESTED]
    cols.append(("extra", JSON))
    return cols


def summarized_columns() -> list[tuple[str, ColumnType]]:
    cols: list[tuple[str, ColumnType]] = list(CONTEXT_COLUMNS)
    names = {name for name, _ in cols}
    cols += [(c, summary_column_type(c)) for c in summary_columns() if c not in names]
    return cols


# ---------------------------------------------------------------------------------------------
# Rows


def _finite_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def plain(value: Any) -> Any:
    """A JSON-safe copy: non-finite floats become null (as in the run's own files)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def coerce(value: Any, typ: ColumnType) -> Any:
    """`value` as the column type says, so that every file of a format has the same types."""
    if value is None:
        return None
    if isinstance(typ, tuple):  # ("list", inner)
        if not isinstance(value, (list, tuple)):
            return None
        return [coerce(v, typ[1]) for v in value]
    if typ == JSON:
        return json.dumps(plain(value), sort_keys=True, allow_nan=False, default=str)
    if typ == STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, (dict, list, tuple)):
            return json.dumps(plain(value), sort_keys=True, allow_nan=False, default=str)
        return str(value)
    if typ == FLOAT:
        if isinstance(value, bool):
            return float(value)
        return _finite_float(value)
    if typ == INT:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        number = _finite_float(value)
        # An integer column never holds a fraction; round rather than break the file's type.
        return None if number is None else round(number)
    if typ == BOOL:
        return bool(value)
    raise ValueError(f"unknown column type {typ!r}")


def _typed_row(columns: Sequence[tuple[str, ColumnType]], values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: coerce(values.get(name), typ) for name, typ in columns}


def _device(run: Mapping[str, Any]) -> str | None:
    caps = (run.get("plan") or {}).get("capabilities") if isinstance(run.get("plan"), Mapping) else None
    device = caps.get("device") if isinstance(caps, Mapping) else None
    return device if isinstance(device, str) else None


def context_row(run: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The columns every row carries: which run, which commit, which software, which machine."""
    environ = os.environ if environ is None else environ
    env = run.get("environment") or {}
    packages = env.get("packages") or {}
    commit = run.get("measured_commit") or {}
    if not isinstance(commit, Mapping):
        commit = {"sha": commit}
    gpus = [g.get("name") for g in env.get("gpus") or [] if isinstance(g, Mapping)]
    branch = commit.get("branch") or run.get("branch") or environ.get("TFBENCH_BRANCH") or None
    return {
        "run_id": run.get("run_id"),
        "run_name": run.get("run_name"),
        "run_status": run.get("status"),
        "run_started_at": run.get("started_at"),
        "run_finished_at": run.get("finished_at"),
        "schema_version": run.get("schema_version"),
        "tfbench_version": run.get("tfbench_version") or packages.get("tfbench"),
        "measured_commit": commit.get("sha"),
        "measured_commit_source": commit.get("source"),
        "branch": branch,
        "hardware": hardware_label(Environment.model_validate(env), _device(run)),
        "gpu_name": gpus[0] if gpus else None,
        "gpu_names": gpus,
        "gpu_count": len(gpus),
        "cpu": env.get("cpu"),
        "cpu_count": env.get("cpu_count"),
        "hostname": env.get("hostname"),
        "driver_version": env.get("driver_version"),
        "cuda_driver_version": env.get("cuda_driver_version"),
        "python_version": env.get("python"),
        "torch_version": packages.get("torch"),
        "transformers_version": packages.get("transformers"),
    }


def full_row(context: Mapping[str, Any], typed: CellRecord) -> dict[str, Any]:
    """One cell, every raw measurement: fixed columns, varying shapes as JSON strings, nothing lost."""
    record = typed.to_dict()
    values: dict[str, Any] = dict(context)
    cell = record.get("cell") or {}
    values["cell_id"] = record.get("cell_id") or cell.get("cell_id")
    for key, col, _ in CELL_FIELDS:
        values[col] = cell.get(key)
    known_cell = {key for key, _, _ in CELL_FIELDS} | {"cell_id"}
    extra: dict[str, Any] = {}
    # tp_size 1 is what a cell without the field reads as: a plain cell's row carries nothing more.
    cell_rest = {k: v for k, v in cell.items() if k not in known_cell and (k, v) != ("tp_size", 1)}
    if cell_rest:
        extra["cell"] = cell_rest
    for key, _ in _RECORD_SCALARS:
        values[key] = record.get(key)

    runs = record.get("runs")
    if isinstance(runs, list):
        runs = [r if isinstance(r, Mapping) else {"value": r} for r in runs]
        for key in RUN_SCALARS:
            values[f"runs_{key}"] = [r.get(key) for r in runs]
        values["runs_token_times"] = [r.get("token_times") for r in runs]
        known_run = set(RUN_SCALARS) | {"token_times"}
        others = [{k: v for k, v in r.items() if k not in known_run} for r in runs]
        values["runs_other"] = others if any(others) else None

    stats = record.get("stats") or {}
    for metric in METRICS:
        mstats = stats.get(metric) or {}
        for stat in STAT_NAMES:
            value = mstats.get(stat)
            values[f"{metric}_{stat}"] = (0 if value is None else value) if stat == "n" else value
    values["peak_memory_bytes"] = (record.get("memory") or {}).get("peak_bytes")
    values.update(gpu_row(typed))
    for key in _RECORD_NESTED:
        values[key] = record.get(key)

    covered = _RECORD_COVERED | {k for k, _ in _RECORD_SCALARS} | set(_RECORD_NESTED)
    rest = {k: v for k, v in record.items() if k not in covered}
    if rest:
        extra["record"] = rest
    values["extra"] = extra or None
    return _typed_row(full_columns(), values)


def summarized_row(context: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    return _typed_row(summarized_columns(), {**summary, **context})


# ---------------------------------------------------------------------------------------------
# Rows back to records


def _decoded(value: Any) -> Any:
    """A JSON column's document (the text itself when it is not JSON)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def row_runs(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A cell record's "runs" list again, from a "full" row's runs_<metric> lists and runs_other."""
    columns = {key: row.get(f"runs_{key}") for key in RUN_SCALARS}
    other = row.get("runs_other")
    if isinstance(other, str):
        try:
            other = json.loads(other)
        except ValueError:
            other = None
    lengths = [len(v) for v in columns.values() if isinstance(v, list)]
    count = max(lengths + [len(other) if isinstance(other, list) else 0], default=0)
    runs = []
    for i in range(count):
        run: dict[str, Any] = {}
        if isinstance(other, list) and i < len(other) and isinstance(other[i], dict):
            run.update(other[i])
        for key, values in columns.items():
            if isinstance(values, list) and i < len(values) and values[i] is not None:
                run[key] = values[i]
        runs.append(run)
    return runs


def row_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A cell record again from a "full" row: what compare reads (cell, status, runs, memory)."""
    # Columns that are null in the row take the record's defaults; JSON columns hold strings.
    cell = {
        key: _decoded(row[col]) if typ == JSON else row[col]
        for key, col, typ in CELL_FIELDS
        if row.get(col) is not None
    }
    # Cell fields without a column of their own (tp_size) travel in "extra".
    extra = _decoded(row.get("extra"))
    rest = extra.get("cell") if isinstance(extra, dict) else None
    if isinstance(rest, dict):
        cell = {**rest, **cell}
    cell["cell_id"] = row.get("cell_id")
    return {
        "cell_id": row.get("cell_id"),
        "status": row.get("status"),
        "reason": row.get("reason"),
        "cell": cell,
        "runs": row_runs(row),
        "memory": _decoded(row.get("memory")) or {},
        "settings": _decoded(row.get("settings")) or None,
        "stats": row_stats(row),
    }


def row_stats(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A cell record's "stats" again from the <metric>_<stat> columns of either format: the
    metrics the row holds a statistic of (n is 0 in the row where nothing was measured)."""
    stats = {}
    for metric in METRICS:
        values = {stat: row.get(f"{metric}_{stat}") for stat in STAT_NAMES}
        if any(v is not None for s, v in values.items() if s != "n") or values.get("n"):
            stats[metric] = {s: v for s, v in values.items() if v is not None}
    return stats
