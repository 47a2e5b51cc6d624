"""Sharded runs end to end: N shards share one run id, the last one merges, `tfbench merge`
refuses what does not add up (a missing shard, a cell recorded twice or not at all)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cells_by_id, clean_env, plan_cells, run_entrypoint, write_config

SHARDS = 3


def _merge(run_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "entrypoint.py"), "merge", str(run_path), *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    # Nine cells, three skipped (GPT-2 does not support flex_attention), over three shards.
    config = write_config(
        base,
        model="synthetic:gpt2-tiny",
        attn_implementation=["eager", "sdpa", "flex_attention"],
        batch_size=[1, 2, 3],
    )
    cells = plan_cells(config)
    assert len(cells) == 9 and sum(1 for c in cells if c["skip_reason"]) == 3
    output = base / "results"
    procs = []
    envs = [
        {"TFBENCH_SHARD": "0/3"},
        {"TFBENCH_SHARD_COUNT": "3", "JOB_COMPLETION_INDEX": "1"},  # as a Kubernetes Indexed Job sets it
        {"TFBENCH_SHARD": "2/3"},
    ]
    for i, extra in enumerate(envs):
        procs.append(run_entrypoint(config, output, env={"TFBENCH_RUN_ID": "sweep", **extra}))
        if i == 0:
            pending_merge = _merge(output / "sweep")
    return {
        "cells": cells,
        "output": output,
        "run": output / "sweep",
        "procs": procs,
        "pending": pending_merge,
    }


def test_each_shard_runs_its_share_and_the_last_one_merges(sharded):
    procs, run = sharded["procs"], sharded["run"]
    for p in procs:
        assert p.returncode == 0, p.stderr
    assert "not merged yet" in procs[0].stderr and "shards not started: 1-of-3, 2-of-3" in procs[0].stderr
    assert f"all {SHARDS} shards finished; merged into" in procs[2].stderr
    shard_ids = [set(cells_by_id(run / "shards" / f"{i}-of-{SHARDS}")) for i in range(SHARDS)]
    assert all(shard_ids)  # every shard had cells
    assert sum(len(s) for s in shard_ids) == len(set().union(*shard_ids))  # disjoint


def test_merged_run_holds_every_cell_exactly_once(sharded):
    run, cells = sharded["run"], sharded["cells"]
    merged = cells_by_id(run)
    assert sorted(merged) == sorted(c["cell_id"] for c in cells)
    statuses = {rec["status"] for rec in merged.values()}
    assert statuses == {"ok", "skipped"}
    for rec in merged.values():
        assert rec["run_id"] == "sweep"
        assert rec["shard"] in {f"{i}-of-{SHARDS}" for i in range(SHARDS)}
        if rec["status"] == "ok":
            assert (run / rec["log"]).is_file()  # the log path points into the shard
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["shard_count"] == SHARDS
    assert sum(meta["counts"].values()) == len(cells)
    assert len(meta["plan"]["cells"]) == len(cells)
    rows = [json.loads(line) for line in (run / "summary.jsonl").read_text().splitlines()]
    assert [r["cell_id"] for r in rows] == [c["cell_id"] for c in cells]


def test_merge_before_all_shards_ran_names_the_missing_ones(sharded):
    pending = sharded["pending"]
    assert pending.returncode == 2
    assert "shards not started: 1-of-3, 2-of-3" in pending.stderr
    assert "Traceback" not in pending.stderr


def test_merge_again_is_idempotent(sharded):
    before = (sharded["run"] / "summary.jsonl").read_text()
    proc = _merge(sharded["run"])
    assert proc.returncode == 0, proc.stderr
    assert (sharded["run"] / "summary.jsonl").read_text() == before


def _copy(sharded, tmp_path: Path) -> Path:
    run = tmp_path / "sweep"
    shutil.copytree(sharded["run"], run)
    return run


def test_merge_refuses_a_cell_recorded_by_two_shards(sharded, tmp_path):
    run = _copy(sharded, tmp_path)
    one = next((run / "shards" / "0-of-3" / "cells").glob("*.json"))
    shutil.copy(one, run / "shards" / "1-of-3" / "cells" / one.name)
    proc = _merge(run)
    assert proc.returncode == 2
    assert f"cells recorded by more than one shard: {one.stem} (0-of-3, 1-of-3)" in proc.stderr


def test_merge_refuses_a_missing_cell_and_an_unfinished_shard(sharded, tmp_path):
    run = _copy(sharded, tmp_path)
    gone = next((run / "shards" / "2-of-3" / "cells").glob("*.json"))
    gone.unlink()
    proc = _merge(run)
    assert proc.returncode == 2
    assert f"1 planned cells have no record: {gone.stem}" in proc.stderr
    meta_path = run / "shards" / "1-of-3" / "run.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "status": "interrupted"}))
    proc = _merge(run)
    assert proc.returncode == 2 and "shards not finished: 1-of-3 (interrupted)" in proc.stderr


def test_merge_of_a_run_that_is_not_sharded_is_exit_2(tmp_path):
    (tmp_path / "plain").mkdir()
    proc = _merge(tmp_path / "plain")
    assert proc.returncode == 2 and "not a sharded run" in proc.stderr


def test_sharded_run_without_run_id_is_exit_2(tmp_path):
    config = write_config(tmp_path)
    proc = run_entrypoint(config, tmp_path / "out", env={"TFBENCH_SHARD": "0/2"})
    assert proc.returncode == 2
    assert "needs TFBENCH_RUN_ID" in proc.stderr


def test_merged_records_are_the_shard_files_linked(sharded):
    """A shard writes each record in its merged form, so the merge links it instead of copying."""
    run = sharded["run"]
    for path in (run / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        source = run / "shards" / rec["shard"] / "cells" / path.name
        assert path.stat().st_ino == source.stat().st_ino, path
        if rec.get("log"):
            assert rec["log"].startswith(f"shards/{rec['shard']}/logs/")
            assert (run / rec["log"]).is_file()


def test_records_of_an_older_layout_are_rewritten_not_linked(sharded, tmp_path):
    """Shard records without `shard` and with a shard-relative log (as earlier versions wrote them)."""
    run = tmp_path / "sweep"
    shutil.copytree(sharded["run"], run)
    shutil.rmtree(run / "cells")
    for path in (run / "shards").glob("*/cells/*.json"):
        rec = json.loads(path.read_text())
        rec.pop("shard")
        if rec.get("log"):
            rec["log"] = rec["log"].split("/", 2)[2]
        path.write_text(json.dumps(rec))
    proc = _merge(run)
    assert proc.returncode == 0, proc.stderr
    for path in (run / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        source = run / "shards" / rec["shard"] / "cells" / path.name
        assert path.stat().st_ino != source.stat().st_ino
        if rec.get("log"):
            assert (run / rec["log"]).is_file(), rec["log"]
