"""The results layout on disk, written atomically so that a kill at any instant leaves no half file.

    <output>/<run_id>/run.json              run metadata, config, plan, environment
    <output>/<run_id>/cells/<cell_id>.json  one per cell, written when its result is known
    <output>/<run_id>/summary.jsonl         one flat row per cell, for pandas and datasets
    <output>/<run_id>/logs/<cell_id>.log    the worker's stdout and stderr
    <output>/<run_id>/traces/<cell_id>.json.gz  the profiled call's trace (config `profile`)
    <output>/<run_id>/work/<cell_id>.<attempt>/  the worker's scratch space (compile caches), removed after
    <output>/<run_id>/shards/<i>-of-<N>/    shard i of a sharded run, laid out as above; the
                                            merged run is written to <output>/<run_id>/
    <output>/<run_id>/quarantine/<name>.<UTC time>  an unreadable file that sat where a cell's
                                            record belongs, moved aside before the cell ran again

A write that fails (a full or read-only volume) raises StorageError naming the path and the
cause. This module is the one reader of a run: open_run (a whole run, for the tools), read_meta
(run.json, for resume and merge), scan_cells (cells/, read_cell for one file, which skips and
names what is not a cell record). Each validates into the typed records of bench.results.records,
once; nothing past it handles raw dicts. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from bench.errors import StorageError, UserError
from bench.results.records import CellRecord, RunMeta, ValidationError, describe_error
from bench.results.summary import summary_rows
from bench.secrets import redact


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def finite(value: Any) -> Any:
    """JSON has no NaN or Infinity; store them as null so any reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
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


def atomic_write_text(path: str | os.PathLike[str], text: str, durable: bool = True) -> None:
    """atomic_write_bytes of the text in UTF-8, with any token in it redacted."""
    atomic_write_bytes(path, redact(text).encode("utf-8"), durable)  # no token reaches a result file


@_writes
def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    """Write to a temporary file beside `path`, fsync, rename over it, fsync the directory.

    durable=False leaves out both fsyncs (the rename still makes the file whole or absent): for
    files derived from others, whose writer syncs once at the end (see merge).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
        return json.dumps(finite(data), indent=indent, default=_json_default, allow_nan=False)


def atomic_write_json(
    path: str | os.PathLike[str], data: Any, durable: bool = True, indent: int | None = 1
) -> None:
    atomic_write_text(path, to_json(data, indent) + "\n", durable=durable)


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass(frozen=True)
class Skipped:
    """A file in a run directory that is not what tfbench writes there (a cell record), and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def read_cell(path: Path) -> tuple[CellRecord | None, str | None]:
    """The cell record stored in `path`, or None and why the file is not one.

    The store writes atomically, so a file that fails here was put there (or damaged) by
    something else: it is named and skipped, never taken for a result. The reason names the
    first fields that are not as tfbench writes them.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"
    try:
        # The common case in one pass of pydantic's own JSON parser (a merge reads 10,000 records).
        record = CellRecord.model_validate_json(raw)
    except ValidationError:
        return _not_a_record(path, raw)
    if path.name != f"{record.cell_id}.json":
        return None, f"cell_id {record.cell_id} does not match the file name"
    return record, None


def _not_a_record(path: Path, raw: bytes) -> tuple[None, str]:
    """Why a file that does not validate as a record is not one, in the words a person needs."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not JSON: not UTF-8 text"
    except RecursionError:
        return None, "not JSON: nested too deeply"
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(data, dict) or not all(k in data for k in ("cell_id", "status", "cell")):
        return None, "not a tfbench cell record"
    try:
        CellRecord.model_validate(data)
    except ValidationError as exc:
        return None, describe_error(exc, "not a tfbench cell record")
    return None, "not a tfbench cell record (its JSON is not as tfbench writes it)"


def scan_cells(cells_dir: Path) -> tuple[list[CellRecord], list[Skipped]]:
    """Every cell record in a cells/ directory (by file name), and the files skipped, each with why.

    Hidden files are the temporaries of atomic writes cut short; they are not results and are
    left to the run that owns them. A missing directory holds no records.
    """
    records: list[CellRecord] = []
    skipped: list[Skipped] = []
    try:
        entries = sorted(p for p in cells_dir.iterdir() if not p.name.startswith("."))
    except OSError:
        return records, skipped
    with bulk():
        _read_into(entries, records, skipped)
    return records, skipped


@contextlib.contextmanager
def bulk() -> Iterator[None]:
    """Thousands of large records alive at once (a merge, a report): without the cyclic collector,
    which would walk them again and again (3x the time of a 10,000-record merge). Records hold no
    reference cycles; the collector runs again when the block ends."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _read_into(entries: list[Path], records: list[CellRecord], skipped: list[Skipped]) -> None:
    for path in entries:
        if path.suffix != ".json" or not path.is_file():
            skipped.append(Skipped(path, "not a cell record (cells/ holds <cell id>.json files)"))
            continue
        record, why = read_cell(path)
        if record is None:
            skipped.append(Skipped(path, str(why)))
        else:
            records.append(record)


def read_meta(run_path: Path) -> RunMeta | None:
    """A run directory's run.json, or None when there is none or it is not one (for the run side,
    which treats such a directory as no run: resume, merge)."""
    try:
        return load_meta(run_path / "run.json")
    except RunFileError:
        return None


class RunFileError(UserError):
    """A run.json or run directory that is not as tfbench writes it (exit 2, naming the file)."""


def load_meta(path: Path) -> RunMeta:
    """run.json validated; RunFileError naming the file and the field otherwise."""
    try:
        data = read_json(path)
    except (OSError, ValueError, RecursionError) as exc:
        raise RunFileError(
            f"{path} cannot be read as JSON: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not isinstance(data, dict) or "run_id" not in data:
        raise RunFileError(f"{path} is not a tfbench run.json (no run_id)")
    try:
        return RunMeta.model_validate(data)
    except ValidationError as exc:
        what = (
            f"the results in {path} are not as tfbench writes them (changed by hand or by another program?)"
        )
        raise RunFileError(describe_error(exc, what)) from None


@dataclass
class Run:
    """A run as read from its directory (or from a Hub dataset): run.json and every cell record."""

    path: Path
    meta: RunMeta
    cells: dict[str, CellRecord]
    skipped: list[Skipped] = field(default_factory=list)  # files in cells/ that are not records

    @property
    def run_id(self) -> str:
        return self.meta.run_id or self.path.name

    def records(self) -> list[CellRecord]:
        """The records in plan order."""
        return sorted(self.cells.values(), key=lambda r: (r.cell.index, r.cell_id))


def open_run(path: str | os.PathLike[str]) -> Run:
    """The one reader of a run directory `<output>/<run id>` (a merged sharded run has the same
    layout). RunFileError (exit 2) when it is not one, saying what it is instead."""
    p = Path(path)
    if not p.exists():
        raise RunFileError(f"{p}: no such run directory")
    if not p.is_dir():
        raise RunFileError(f"{p} is not a tfbench run directory but a file; give <output>/<run id>")
    if not (p / "run.json").is_file():
        if (p / "shards").is_dir():
            raise RunFileError(
                f"{p} is a sharded run whose shards have not been merged: run `tfbench merge {p}`"
            )
        inside = sorted(c.name for c in run_dirs_in(p))
        hint = f"; it holds run directories ({', '.join(inside[:5])}): give one of them" if inside else ""
        raise RunFileError(f"{p} is not a tfbench run directory: it has no run.json{hint}")
    meta = load_meta(p / "run.json")
    records, skipped = scan_cells(p / "cells")
    return Run(p, meta, {r.cell_id: r for r in records}, skipped)


def _subdirectories(root: Path) -> Iterator[Path]:
    """The directories directly under `root`, hidden ones left out; what cannot be looked at is skipped."""
    try:
        children = sorted(root.iterdir())
    except OSError:
        return
    for child in children:
        try:
            if child.is_dir() and not child.name.startswith("."):
                yield child
        except OSError:
            continue


def run_dirs_in(root: Path) -> list[Path]:
    """The run directories directly under `root` (anything else there, lost+found, notes, a
    directory without a run.json, is no run)."""
    return [child for child in _subdirectories(root) if (child / "run.json").is_file()]


def unmerged_runs_in(root: Path) -> list[Path]:
    """The sharded runs directly under `root` whose shards have not been merged (no run.json yet)."""
    return [c for c in _subdirectories(root) if not (c / "run.json").is_file() and (c / "shards").is_dir()]


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

    def trace_path(self, cell_id: str) -> Path:
        """Where a profiled cell's trace goes (made by the worker that profiles: most runs have none)."""
        return self.path / "traces" / f"{cell_id}.json.gz"

    def scratch(self, cell_id: str) -> Path:
        d = self.work / cell_id
        with storage_errors(d):
            d.mkdir(parents=True, exist_ok=True)
        return d

    def drop_scratch(self, cell_id: str) -> None:
        shutil.rmtree(self.work / cell_id, ignore_errors=True)

    def write_run(self, meta: RunMeta) -> None:
        atomic_write_json(self.run_json, meta.to_dict())

    def write_cell(self, record: CellRecord, durable: bool = True) -> None:
        # One line: cell records are many and large (per-run timings), and read by programs.
        atomic_write_json(self.cell_path(record.cell_id), record.to_dict(), durable=durable, indent=None)

    def read_cells(self) -> list[CellRecord]:
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

    def write_summary(self, records: Iterable[CellRecord], durable: bool = True) -> None:
        rows = summary_rows(self.run_id, list(records))
        atomic_write_text(self.summary, "".join(to_json(row) + "\n" for row in rows), durable=durable)
