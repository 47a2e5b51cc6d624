"""One cell across many runs: the measurements `tfbench history` reads, from run directories and
transformers benchmark_v2 results files.

A Measurement is one run's record of one cell, with what the run says about itself: its id, the
measured commit and branch, its start time and the hardware label (bench.results.records'
hardware_label, the `hardware` column of the Hub rows). Both sources of a history produce them:
this module reads a directory of run directories (with the readers of bench.results.store) and
the benchmark_v2 results files in it (bench.results.benchmark_v2_read), and bench.hub.pull reads
the rows of a Hub dataset. bench.analysis.levels turns them into points.

A cell is named by its id, a unique prefix of one (at least 4 characters) or a unique cell name
(resolve_cell); the names come from each run's summary.jsonl, and from the records it does not
list (a run stopped before its summary).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from bench.results.benchmark_v2_read import is_results_file, read_results_file
from bench.results.records import CellRecord, RunMeta
from bench.results.store import (
    Run,
    RunFileError,
    Skipped,
    load_meta,
    read_cell,
    read_meta,
    run_dirs_in,
    unmerged_runs_in,
)

MIN_PREFIX = 4  # characters of a cell id prefix


@dataclass(frozen=True)
class Measurement:
    """One run's record of the cell, and where and when the run measured it."""

    run_id: str
    commit: str | None  # the measured commit's sha
    branch: str | None
    started_at: str | None  # ISO 8601, as the run recorded it
    hardware: str  # the run's hardware label
    record: CellRecord
    source: str  # the run directory, or hub:ORG/NAME/<file>


def resolve_cell(query: str, known: dict[str, str], where: str) -> str:
    """The cell id `query` names: a cell id, a unique id prefix (>= 4 characters) or a unique cell name.

    known: cell id -> name of the cells in `where` (named in the messages).
    """
    q = query.strip()
    if not q:
        raise UserError("--cell is empty: give a cell id (the cells/<cell id>.json of a run)")
    if q in known:
        return q
    by_name = sorted(cid for cid, name in known.items() if name == q)
    by_prefix = sorted(cid for cid in known if len(q) >= MIN_PREFIX and cid.startswith(q))
    for found, how in ((by_name, "named"), (by_prefix, "with ids starting with")):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = ", ".join(f"{cid} ({known[cid] or '?'})" for cid in found[:10])
            raise UserError(f"--cell {q!r} is ambiguous in {where}: {len(found)} cells {how} it: {listed}")
    sample = ", ".join(f"{cid} ({name or '?'})" for cid, name in sorted(known.items())[:10])
    more = f" and {len(known) - 10} more" if len(known) > 10 else ""
    hint = f"; cells there: {sample}{more}" if known else ""
    short = " (a prefix needs at least 4 characters)" if 0 < len(q) < MIN_PREFIX else ""
    raise UserError(f"no cell {q!r} in {where}{short}{hint}")


# ---------------------------------------------------------------------------------- run directories


def _run_dirs(directory: str | os.PathLike[str]) -> tuple[list[Path], list[Path], list[str]]:
    """The run directories and the benchmark_v2 results files of a history, and notes."""
    root = Path(directory)
    if not root.exists():
        raise UserError(f"{root}: no such directory")
    if not root.is_dir():
        raise UserError(f"{root} is a file; give a directory of run directories (the results output)")
    if (root / "run.json").is_file():
        return [root], [], []
    # Anything else in the output (lost+found, notes, a directory without a run) is no run.
    runs = run_dirs_in(root)
    notes = [
        f"{child.name} is a sharded run not merged yet (`tfbench merge {child}`): left out"
        for child in unmerged_runs_in(root)
    ]
    v2_files = _benchmark_v2_files(root, runs)
    if not runs and not v2_files:
        raise UserError(
            f"{root} holds no run directories (a run directory has a run.json) and no benchmark_v2 "
            "results files (<model>/<model>_benchmark_<time>.json)"
        )
    return runs, v2_files, notes


def _benchmark_v2_files(root: Path, runs: list[Path]) -> list[Path]:
    """The benchmark_v2 results files in `root` and one level down (benchmark_v2 writes
    <output>/<model with / as _>/<same>_benchmark_<time>.json), less those a tfbench run wrote
    beside itself (`tfbench v2` records the file's name as benchmark_v2_file in its run.json):
    that run is in the history once, as the run directory."""
    skip = set(runs)
    try:
        children = sorted(root.iterdir())
    except OSError:
        children = []
    folders = [root]
    for child in children:
        try:
            if child.is_dir() and child not in skip and not child.name.startswith("."):
                folders.append(child)
        except OSError:
            continue
    found: list[Path] = []
    for folder in folders:
        try:
            found += [p for p in sorted(folder.glob("*.json")) if is_results_file(p)]
        except OSError:
            continue
    if not found:
        return found  # the common output: no run.json needs reading
    written = set()
    for run in runs:
        meta = read_meta(run)
        name = (meta.model_extra or {}).get("benchmark_v2_file") if meta is not None else None
        if isinstance(name, str) and name:
            written.add(Path(name).name)
    return [p for p in found if p.name not in written]


def _summary_names(run: Path) -> dict[str, str]:
    """cell id -> name from a run's summary.jsonl (empty if it has none yet)."""
    names: dict[str, str] = {}
    try:
        lines = (run / "summary.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return names
    for line in lines:
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("cell_id"):
            names[str(row["cell_id"])] = str(row.get("name") or "")
    return names


def _local_cells(runs: list[Path], skipped: dict[Path, Skipped]) -> dict[str, str]:
    """cell id -> name over all runs: from summary.jsonl, and from the records it does not list
    (a run stopped before its summary). Files that are not records go to `skipped`."""
    known: dict[str, str] = {}
    for run in runs:
        listed = _summary_names(run)
        for cid, name in listed.items():
            known[cid] = name or known.get(cid, "")
        for path in sorted((run / "cells").glob("*.json")):
            if path.stem in listed:
                continue  # the summary named it: no need to read a large record
            record, why = read_cell(path)
            if record is None:
                skipped[path] = Skipped(path, str(why))
                continue
            known[path.stem] = known.get(path.stem) or record.name
    return known


def _branch(meta: RunMeta) -> str | None:
    """The branch the run recorded (measured_commit.branch, else a "branch" key of run.json); never
    this shell's TFBENCH_BRANCH: the run was measured elsewhere or earlier."""
    recorded = meta.measured_commit.branch if meta.measured_commit is not None else None
    extra = (meta.model_extra or {}).get("branch")
    return recorded or extra or None


def local_measurements(
    directory: str | os.PathLike[str], cell: str, warn: Callable[[Skipped], None]
) -> tuple[list[Measurement], list[str]]:
    """The records of `cell` in the run directories under `directory` (or the run `directory` is)
    and in the benchmark_v2 results files there (or one level down), one per run that has one, and
    notes on what was left out (an unmerged sharded run, a run.json that is not one, a file that
    is not benchmark_v2's). Each file in a cells/ that is not a record, and each benchmark_v2
    config that is no tfbench cell, is passed to `warn` once, also when a UserError (no such
    directory, an unknown or ambiguous cell) ends the reading.
    """
    runs, v2_files, notes = _run_dirs(directory)
    skipped: dict[Path, Skipped] = {}
    left_out: list[Skipped] = []
    try:
        v2_runs = _read_benchmark_v2(v2_files, notes, left_out)
        return _measurements(runs, v2_runs, notes, cell, str(directory), skipped)
    finally:
        for item in [*skipped.values(), *left_out]:
            warn(item)


def _read_benchmark_v2(files: list[Path], notes: list[str], left_out: list[Skipped]) -> list[Run]:
    runs = []
    for path in files:
        try:
            run = read_results_file(path)
        except RunFileError as exc:
            notes.append(f"{exc}: left out")
            continue
        left_out += run.skipped
        runs.append(run)
    return runs


def measurement(meta: RunMeta, record: CellRecord, source: str) -> Measurement:
    """A run's record of the cell, with what the run says about itself (source: where it was read)."""
    return Measurement(
        run_id=meta.run_id or Path(source).name,
        commit=meta.commit_sha,
        branch=_branch(meta),
        started_at=meta.started_at,
        hardware=meta.hardware,
        record=record,
        source=source,
    )


def _measurements(
    runs: list[Path],
    v2_runs: list[Run],
    notes: list[str],
    cell: str,
    where: str,
    skipped: dict[Path, Skipped],
) -> tuple[list[Measurement], list[str]]:
    q = cell.strip()
    plain = re.fullmatch(r"[0-9A-Za-z_.-]+", q) and not q.startswith(".")
    if plain and (
        any((run / "cells" / f"{q}.json").is_file() for run in runs) or any(q in r.cells for r in v2_runs)
    ):
        cell_id = q
    else:
        known = _local_cells(runs, skipped)
        for v2_run in v2_runs:
            for cid, rec in v2_run.cells.items():
                known[cid] = known.get(cid) or rec.name
        cell_id = resolve_cell(cell, known, where)
    found: list[Measurement] = []
    for run in runs:
        path = run / "cells" / f"{cell_id}.json"
        if not path.is_file():
            continue
        try:
            meta = load_meta(run / "run.json")
        except RunFileError as exc:
            notes.append(f"{run.name}: {exc}: left out")
            continue
        record, why = read_cell(path)
        if record is None:
            skipped[path] = Skipped(path, str(why))
            continue
        found.append(measurement(meta, record, str(run)))
    for v2_run in v2_runs:
        if cell_id in v2_run.cells:
            found.append(measurement(v2_run.meta, v2_run.cells[cell_id], str(v2_run.path)))
    return found, notes
