"""Merge the shards of a run into one run, refusing if a cell is missing or recorded twice.

    <output>/<run_id>/shards/<i>-of-<N>/   written by shard i (a run directory each)
    <output>/<run_id>/                     the merged run: run.json, cells/, summary.jsonl

Merging is idempotent: it may run again (by hand, or by every shard that finishes last) and
writes the same result. No torch here.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import SCHEMA_VERSION, __version__
from bench.errors import UserError
from bench.results.records import CellRecord, RunMeta, status_counts
from bench.results.store import (
    RunDir,
    Skipped,
    bulk,
    read_meta,
    scan_cells,
    storage_errors,
    to_json,
    write_new_text,
)
from bench.run.resume import RunLock

MERGE_LOCK = ".merge.lock"


class MergeError(UserError):
    """The shards do not add up to the run: missing, unfinished, duplicated or inconsistent."""


@dataclass
class Shards:
    run_path: Path
    metas: dict[str, RunMeta] = field(default_factory=dict)  # shard name -> run.json
    verbatim: set[str] = field(default_factory=set)  # cells whose shard file is already in merged form


def read_shards(run_path: Path) -> Shards:
    shards = Shards(run_path)
    root = run_path / "shards"
    if not root.is_dir():
        raise MergeError(f"{run_path} has no shards/ directory: it is not a sharded run")
    for path in sorted(root.iterdir()):
        meta = read_meta(path) if path.is_dir() else None
        if meta is None or meta.shard is None or meta.identity is None or meta.plan is None:
            raise MergeError(f"{path} is not a shard of a tfbench run (no readable run.json with a shard)")
        shards.metas[path.name] = meta
    if not shards.metas:
        raise MergeError(f"{root} is empty: no shard has started yet")
    return shards


def check(shards: Shards) -> list[str]:
    """Why these shards cannot be merged yet; an empty list when they can."""
    problems: list[str] = []
    metas = shards.metas
    counts = {m.shard.count for m in metas.values() if m.shard}
    if len(counts) > 1:
        return [f"the shards disagree on the shard count: {sorted(counts)}"]
    (count,) = counts
    present = {m.shard.index for m in metas.values() if m.shard}
    missing = [f"{i}-of-{count}" for i in range(count) if i not in present]
    if missing:
        problems.append(f"shards not started: {', '.join(missing)}")
    for key, label in (("cells", "plan"), ("settings", "measurement settings"), ("hardware", "hardware")):
        seen = {repr((m.identity or {}).get(key)) for m in metas.values()}
        if len(seen) > 1:
            problems.append(f"the shards ran different {label}: " + "; ".join(sorted(seen)))
    ids = {m.run_id for m in metas.values()}
    if len(ids) > 1:
        problems.append(f"the shards carry different run ids: {sorted(ids)}")
    unfinished = [f"{name} ({m.status})" for name, m in sorted(metas.items()) if m.status != "finished"]
    if unfinished:
        problems.append(
            "shards not finished: " + ", ".join(unfinished) + " (restart them with the same run id to resume)"
        )
    return problems


def collect(
    shards: Shards, warn: Callable[[Skipped], None] | None = None
) -> tuple[RunMeta, list[CellRecord]]:
    """The full plan and every cell record, checked: each planned cell exactly once.

    A file in a shard's cells/ that is not a cell record is passed to `warn` and left out (its
    cell then counts as missing, if it is planned).
    """
    first = next(iter(shards.metas.values()))
    plan_cells = [c["cell_id"] for c in first.planned_cells()]
    planned = set(plan_cells)
    owners: dict[str, list[str]] = {}
    records: dict[str, CellRecord] = {}
    for name in sorted(shards.metas):
        found, skipped = scan_cells(shards.run_path / "shards" / name / "cells")
        for item in skipped if warn is not None else ():
            warn(item)
        for rec in found:
            cid = rec.cell_id
            owners.setdefault(cid, []).append(name)
            if rec.shard == name:
                shards.verbatim.add(cid)  # the file holds the record as merged: it can be linked
                records[cid] = rec
            else:
                records[cid] = rec.with_updates(shard=name)
    problems = []
    dup = {cid: names for cid, names in owners.items() if len(names) > 1}
    if dup:
        problems.append(
            "cells recorded by more than one shard: "
            + ", ".join(f"{cid} ({', '.join(n)})" for cid, n in sorted(dup.items()))
        )
    unknown = sorted(set(owners) - planned)
    if unknown:
        problems.append(f"cells not in the plan: {', '.join(unknown)}")
    missing = sorted(planned - set(owners))
    if missing:
        problems.append(f"{len(missing)} planned cells have no record: {', '.join(missing[:20])}")
    unsettled = sorted(cid for cid, r in records.items() if r.status == "running")
    if unsettled:
        problems.append(f"cells still marked running: {', '.join(unsettled)}")
    if problems:
        raise MergeError(f"cannot merge {shards.run_path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return first, [records[cid] for cid in plan_cells]


def merge(
    run_path: Path,
    shards: Shards | None = None,
    warn: Callable[[Skipped], None] | None = None,
) -> tuple[RunMeta, list[CellRecord]]:
    """Merge the shards under run_path into run_path; returns the merged run.json and cell records.

    `shards`: already read and checked by the caller (try_merge), so they are not read twice.
    `warn`: called with each file in a shard's cells/ that is not a cell record.
    """
    if shards is None:
        shards = read_shards(run_path)
        problems = check(shards)
        if problems:
            raise MergeError(f"cannot merge {run_path}:\n" + "\n".join(f"  - {p}" for p in problems))
    with bulk():
        first, records = collect(shards, warn)
        rundir = RunDir(run_path.parent, run_path.name)
        records = _replace_cells(rundir, records, first.run_id, shards.verbatim)
        rundir.write_summary(records, durable=False)
    os.sync()  # the derived files reach the disk before run.json says the merge is done
    counts = status_counts(records)
    metas = sorted(shards.metas.values(), key=lambda m: m.shard.index if m.shard else 0)
    given = first.to_dict()
    merged = RunMeta.model_validate(
        {
            "run_id": first.run_id,
            "run_name": first.run_name,
            "schema_version": SCHEMA_VERSION,
            "tfbench_version": __version__,
            "status": "finished",
            "started_at": min(m.started_at or "" for m in metas),
            "finished_at": max(m.finished_at or "" for m in metas),
            "counts": counts,
            "shard_count": first.shard.count if first.shard else len(metas),
            "shards": [
                {
                    "name": m.shard.name if m.shard else "?",
                    "cells": len(m.shard.cell_ids) if m.shard else 0,
                    "started_at": m.started_at,
                    "finished_at": m.finished_at,
                    "hostname": m.environment.hostname if m.environment else None,
                    "counts": m.counts,
                    "invocations": len(m.invocations) or 1,
                }
                for m in metas
            ],
            "identity": {**(first.identity or {}), "shard": None},
            **{
                k: given.get(k)
                for k in ("config_source", "config_as_given", "config", "plan", "measured_commit")
            },
            # Shards ran on identical hardware (checked); the rest of the environment is the first shard's.
            "environment": given.get("environment"),
        }
    )
    rundir.write_run(merged)
    return merged, records


def _merged_form(rec: CellRecord, run_id: str) -> CellRecord:
    """A shard's record as the merged run holds it. The runner writes shard records in this form
    already; records written by earlier versions lack the shard and the log prefix."""
    log = rec.log
    if rec.run_id == run_id and (not log or log.startswith("shards/")):
        return rec
    return rec.with_updates(
        run_id=run_id, log=f"shards/{rec.shard}/{log}" if log and not log.startswith("shards/") else log
    )


def _replace_cells(
    rundir: RunDir, records: list[CellRecord], run_id: str, verbatim: set[str]
) -> list[CellRecord]:
    """Build the merged cells/ whole in a hidden directory, then swap it in by renames: readers
    see the old cells/ or the new one, never a mix; a killed merge's leftovers go first.

    A shard record already in merged form is hard-linked (no copy: a 10,000-cell merge writes
    no cell data); safe because every write of a record replaces its file, never edits it in
    place. Other records, or a volume without hard links, get a plain copy: the merged run is
    derived from the shards and can always be merged again, so no per-file fsync either.
    Returns the records as merged.
    """
    parent = rundir.path
    for stale in parent.glob(".cells-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging, old = parent / f".cells-new-{os.getpid()}", parent / f".cells-old-{os.getpid()}"
    linkable = True
    out = []
    with storage_errors(staging):
        staging.mkdir()
        for rec in records:
            merged = _merged_form(rec, run_id)
            out.append(merged)
            name = f"{rec.cell_id}.json"
            target = staging / name
            if linkable and merged is rec and rec.cell_id in verbatim:
                try:
                    os.link(rundir.root / "shards" / str(rec.shard) / "cells" / name, target)
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise
                    linkable = False  # a volume without hard links: copy from now on
            write_new_text(target, to_json(merged.to_dict()) + "\n")
        if rundir.cells.exists():
            os.rename(rundir.cells, old)
        os.rename(staging, rundir.cells)
    shutil.rmtree(old, ignore_errors=True)
    return out


def try_merge(
    run_path: Path, warn: Callable[[Skipped], None] | None = None
) -> tuple[RunMeta | None, list[str]]:
    """Merge if every shard has finished (the last one to finish does it); else say what is pending.

    The lock keeps two shards finishing together from writing the merged files at once.
    """
    lock = RunLock(run_path / MERGE_LOCK)
    if not lock.acquire():
        return None, ["another shard is merging"]
    try:
        shards = read_shards(run_path)
        problems = check(shards)
        if problems:
            return None, problems
        return merge(run_path, shards, warn)[0], []
    except MergeError as exc:
        return None, [str(exc)]
    finally:
        lock.release()  # the lock file stays: unlinking it would let two holders lock two inodes
