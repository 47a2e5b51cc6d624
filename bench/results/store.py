"""The results layout on disk, written atomically so that a kill at any instant leaves no half file.

    <output>/<run_id>/run.json              run metadata, config, plan, environment
    <output>/<run_id>/cells/<cell_id>.json  one per cell, written when its result is known
    <output>/<run_id>/summary.jsonl         one flat row per cell, for pandas and datasets
    <output>/<run_id>/logs/<cell_id>.log    the worker's stdout and stderr
    <output>/<run_id>/work/<cell_id>.<attempt>/  the worker's scratch space (compile caches), removed after
    <output>/<run_id>/shards/<i>-of-<N>/    shard i of a sharded run, laid out as above; the
                                            merged run is written to <output>/<run_id>/
    <output>/<run_id>/quarantine/<name>.<UTC time>  an unreadable file that sat where a cell's
                                            record belongs, moved aside before the cell ran again

A write that fails (a full or read-only volume) raises StorageError naming the path and the
cause. Every reader of cells/ goes through scan_cells (read_cell for one file), which skips and
names what is not a cell record. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from bench.errors import StorageError
from bench.results.stats import METRICS, STAT_NAMES
from bench.secrets import redact

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


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError while writing results becomes a StorageError naming the path and the cause."""
    try:
        yield
    except OSError as exc:
        raise StorageError(path, exc) from exc


_F = TypeVar("_F", bound=Callable[..., Any])


def _writes(fn: _F) -> _F:
    @functools.wraps(fn)
    def wrapper(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        with storage_errors(path):
            return fn(path, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@_writes
def atomic_write_text(path: str | os.PathLike[str], text: str, durable: bool = True) -> None:
    """Write to a temporary file beside `path`, fsync, rename over it, fsync the directory.

    durable=False leaves out both fsyncs (the rename still makes the file whole or absent): for
    files derived from others, whose writer syncs once at the end (see merge).
    """
    path, text = Path(path), redact(text)  # no token reaches a result file
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # on a volume gone read-only the temporary stays
            os.unlink(tmp)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_new_text(path: Path, text: str) -> None:
    """A file in a directory no reader looks at yet (see merge): no temporary, no fsync."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(redact(text))  # no token reaches a result file


def to_json(data: Any, indent: int | None = None) -> str:
    """JSON any reader can parse: NaN and Infinity stored as null.

    The common case (no such value) takes one pass of the C encoder; indent=None keeps it there
    (an indent switches json to its pure-Python encoder, ~10x slower on a cell record).
    """
    try:
        return json.dumps(data, indent=indent, default=_json_default, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), indent=indent, default=_json_default, allow_nan=False)


def atomic_write_json(
    path: str | os.PathLike[str], data: Any, durable: bool = True, indent: int | None = 1
) -> None:
    atomic_write_text(path, to_json(data, indent) + "\n", durable=durable)


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def status_counts(records: Iterable[dict[str, Any]], planned: int | None = None) -> dict[str, int]:
    """How many records have each status; with `planned`, also how many planned cells have none."""
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    if planned is not None:
        counts["not_run"] = planned - sum(counts.values())
    return counts


@dataclass(frozen=True)
class Skipped:
    """A file in a run directory that is not what tfbench writes there (a cell record), and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def read_cell(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The cell record stored in `path`, or None and why the file is not one.

    The store writes atomically, so a file that fails here was put there (or damaged) by
    something else: it is named and skipped, never taken for a result.
    """
    try:
        record = read_json(path)
    except UnicodeDecodeError:
        return None, "not JSON: not UTF-8 text"
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("cell_id"), str)
        or not isinstance(record.get("status"), str)
        or not isinstance(record.get("cell"), dict)
    ):
        return None, "not a tfbench cell record"
    if path.name != f"{record['cell_id']}.json":
        return None, f"cell_id {record['cell_id']} does not match the file name"
    return record, None


def scan_cells(cells_dir: Path) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """Every cell record in a cells/ directory (by file name), and the files skipped, each with why.

    Hidden files are the temporaries of atomic writes cut short; they are not results and are
    left to the run that owns them. A missing directory holds no records.
    """
    records: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    try:
        entries = sorted(p for p in cells_dir.iterdir() if not p.name.startswith("."))
    except OSError:
        return records, skipped
    for path in entries:
        if path.suffix != ".json" or not path.is_file():
            skipped.append(Skipped(path, "not a cell record (cells/ holds <cell id>.json files)"))
            continue
        record, why = read_cell(path)
        if record is None:
            skipped.append(Skipped(path, str(why)))
        else:
            records.append(record)
    return records, skipped


class RunDir:
    def __init__(self, output: str | os.PathLike[str], run_id: str, shard: str | None = None):
        self.output = Path(output)
        self.run_id = run_id
        self.shard = shard
        # A shard of a run lives inside the run's directory; the merge writes the run beside it.
        self.root = self.output / run_id
        self.path = self.root / "shards" / shard if shard else self.root
        self.cells = self.path / "cells"
        self.logs = self.path / "logs"
        self.work = self.path / "work"
        self.run_json = self.path / "run.json"
        self.summary = self.path / "summary.jsonl"

    def create(self) -> None:
        for d in (self.path, self.cells, self.logs, self.work):
            with storage_errors(d):
                d.mkdir(parents=True, exist_ok=True)

    def cell_path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.json"

    def log_path(self, cell_id: str) -> Path:
        return self.logs / f"{cell_id}.log"

    def scratch(self, cell_id: str) -> Path:
        d = self.work / cell_id
        with storage_errors(d):
            d.mkdir(parents=True, exist_ok=True)
        return d

    def drop_scratch(self, cell_id: str) -> None:
        shutil.rmtree(self.work / cell_id, ignore_errors=True)

    def write_run(self, data: dict[str, Any]) -> None:
        atomic_write_json(self.run_json, data)

    def write_cell(self, record: dict[str, Any], durable: bool = True) -> None:
        # One line: cell records are many and large (per-run timings), and read by programs.
        atomic_write_json(self.cell_path(record["cell_id"]), record, durable=durable, indent=None)

    def read_cells(self) -> list[dict[str, Any]]:
        return scan_cells(self.cells)[0]

    def quarantine(self, path: Path) -> Path:
        """Move a file aside to quarantine/<name>.<UTC time>: kept for a person to look at, and
        out of the way of the record that is written in its place."""
        folder = self.path / "quarantine"
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        dest = folder / f"{path.name}.{stamp}"
        with storage_errors(dest):
            folder.mkdir(exist_ok=True)
            os.rename(path, dest)
        return dest

    def write_summary(self, records: Iterable[dict[str, Any]], durable: bool = True) -> None:
        rows = [summary_row(self.run_id, r) for r in sorted(records, key=lambda r: r["cell"]["index"])]
        atomic_write_text(self.summary, "".join(to_json(row) + "\n" for row in rows), durable=durable)


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
