"""Files tfbench did not write, in a results directory: a truncated cell record, binary junk, a
note, a record saved under another cell's name, and strangers in the output root. A continued
run names each one, moves aside the one that sits where a cell's record belongs (and runs that
cell again), and measures nothing else twice; merge, report, compare, history and push skip them
with a warning and never upload them."""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from bench.results.store import scan_cells
from tests.conftest import plan_cells, run_entrypoint, start_entrypoint, wait_for, write_config
from tests.hub_server import FakeHub

MISNAMED = "deadbeefdeadbeef"  # a copy of another cell's record saved under this name
JUNK = bytes(range(256)) * 4  # not UTF-8, not JSON


def _records(run: Path, cell_ids: list[str]) -> dict[str, dict[str, Any]]:
    return {cid: json.loads((run / "cells" / f"{cid}.json").read_text()) for cid in cell_ids}


def _running(run_dir: Path, cell_id: str) -> bool:
    try:
        status = json.loads((run_dir / "cells" / f"{cell_id}.json").read_text())["status"]
    except (OSError, ValueError):
        return False
    return status == "running" and (run_dir / "work" / f"{cell_id}.1.0").is_dir()


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, Any]:
    """A four-cell run stopped by SIGTERM while its last cell ran, with foreign files planted in
    it and beside it; then the same command again, which continues it."""
    base = tmp_path_factory.mktemp("foreign")
    config = write_config(base, batch_size=[1, 2, 3, 4])
    cells = [c["cell_id"] for c in plan_cells(config)]
    output = base / "results"
    first = start_entrypoint(config, output, env={"TFBENCH_FAULT": f"{cells[3]}:hang"})
    wait_for(lambda: output.exists() and any(_running(p, cells[3]) for p in output.iterdir()))
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 143, stderr
    (run,) = [p for p in output.iterdir() if p.is_dir()]
    before = _records(run, cells)
    assert [before[c]["status"] for c in cells] == ["ok", "ok", "ok", "interrupted"]

    truncated_path = run / "cells" / f"{cells[1]}.json"
    truncated = truncated_path.read_bytes()[:200]
    truncated_path.write_bytes(truncated)
    (run / "cells" / "junk.json").write_bytes(JUNK)
    (run / "cells" / "notes.txt").write_text("measured on a quiet machine\n")
    (run / "cells" / f"{MISNAMED}.json").write_bytes((run / "cells" / f"{cells[0]}.json").read_bytes())
    (output / "lost+found").mkdir()
    (output / "notes.txt").write_text("results of the nightly runs\n")
    (output / "mine").mkdir()
    (output / "mine" / "data.csv").write_text("a,b\n1,2\n")
    (output / "broken").mkdir()
    (output / "broken" / "run.json").write_text("{not json")
    foreign = {p: p.read_bytes() for p in (run / "cells").iterdir() if p.stem not in cells}

    again = run_entrypoint(config, output)
    return {
        "config": config,
        "cells": cells,
        "output": output,
        "run": run,
        "before": before,
        "truncated": truncated,
        "foreign": foreign,
        "again": again,
        "after": _records(run, cells),
    }


def test_continuing_runs_the_corrupted_and_interrupted_cells_once_and_nothing_else(planted):
    cells, before, after = planted["cells"], planted["before"], planted["after"]
    assert planted["again"].returncode == 0, planted["again"].stderr
    assert "Traceback" not in planted["again"].stderr
    assert all(after[c]["status"] == "ok" for c in cells)
    for cid in (cells[0], cells[2]):  # good records: kept, not measured again
        assert after[cid] == before[cid]
    # The corrupted record's cell ran once more; its history went with the unreadable file.
    assert after[cells[1]]["attempt"] == 1 and after[cells[1]]["worker_pid"] != before[cells[1]]["worker_pid"]
    assert after[cells[3]]["attempt"] == 2
    assert [a["status"] for a in after[cells[3]]["attempts"]] == ["interrupted"]
    meta = json.loads((planted["run"] / "run.json").read_text())
    assert meta["status"] == "finished" and meta["counts"] == {"ok": 4, "not_run": 0}


def test_the_corrupted_record_is_moved_to_quarantine_never_overwritten(planted):
    run, cid = planted["run"], planted["cells"][1]
    (moved,) = (run / "quarantine").iterdir()
    assert re.fullmatch(rf"{cid}\.json\.\d{{8}}T\d{{6}}\.\d{{6}}Z", moved.name), moved.name
    assert moved.read_bytes() == planted["truncated"]


def test_foreign_files_that_do_not_collide_are_left_in_place(planted):
    for path, data in planted["foreign"].items():
        assert path.read_bytes() == data, path


def test_warnings_name_each_file(planted):
    run, cells, stderr = planted["run"], planted["cells"], planted["again"].stderr
    cells_dir = run / "cells"
    assert f"{cells_dir / 'junk.json'}: not JSON: not UTF-8 text; skipped" in stderr
    assert f"{cells_dir / 'notes.txt'}: not a cell record" in stderr
    assert f"{cells_dir / MISNAMED}.json: cell_id {cells[0]} does not match the file name; skipped" in stderr
    assert f"{cells_dir / cells[1]}.json: not JSON: " in stderr
    assert f"moved to {run / 'quarantine' / cells[1]}.json." in stderr


def test_strangers_in_the_output_do_not_disturb_run_selection(planted):
    output = planted["output"]
    assert f"run {planted['run'].name} continues" in planted["again"].stderr
    # No new run was started beside them, and none of them was touched.
    assert sorted(p.name for p in output.iterdir()) == sorted(
        ["lost+found", "notes.txt", "mine", "broken", planted["run"].name]
    )
    assert (output / "broken" / "run.json").read_text() == "{not json"
    assert not any((output / "lost+found").iterdir())


def _cli(planted: dict[str, Any], *args: str, env: dict[str, str] | None = None):
    proc = run_entrypoint(planted["config"], planted["output"], *args, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _warned(stderr: str, run: Path) -> None:
    for name in ("junk.json", "notes.txt", f"{MISNAMED}.json"):
        assert f"{run / 'cells' / name}: " in stderr, (name, stderr)


def test_report_and_compare_skip_foreign_files_with_a_warning(planted):
    run, cells = planted["run"], planted["cells"]
    report = _cli(planted, "report", str(run))
    assert report.returncode == 0, report.stderr
    _warned(report.stderr, run)
    assert all(cid[:8] in report.stdout for cid in cells)
    compare = _cli(planted, "compare", str(run), str(run), "--format", "json")
    assert compare.returncode == 0, compare.stderr
    _warned(compare.stderr, run)
    data = json.loads(compare.stdout)
    assert sorted(c["cell_id"] for c in data["cells"]) == sorted(cells)


def test_history_skips_foreign_files_and_strangers_in_the_output(planted):
    run, cells = planted["run"], planted["cells"]
    # A prefix makes history list the cells of every run, reading records the summary does not name.
    proc = _cli(planted, "history", str(planted["output"]), "--metric", "e2e_latency", "--cell", cells[0][:8])
    assert proc.returncode == 0, proc.stderr
    # The run, labelled by when it ran and its name (it has no measured commit).
    stamp, name = run.name.split("-", 1)
    assert f"{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]} {name}" in proc.stdout
    for name in ("junk.json", f"{MISNAMED}.json"):
        assert f"{run / 'cells' / name}: " in proc.stderr and "left out" in proc.stderr


def _as_shard(run: Path, dest: Path) -> Path:
    """The run, laid out as the only shard of a sharded run (what a one-pod Indexed Job leaves)."""
    shard = dest / "shards" / "0-of-1"
    shutil.copytree(run, shard)
    meta = json.loads((shard / "run.json").read_text())
    ids = [c["cell_id"] for c in meta["plan"]["cells"]]
    meta["shard"] = {"index": 0, "count": 1, "name": "0-of-1", "cell_ids": ids}
    meta["identity"]["shard"] = "0-of-1"
    (shard / "run.json").write_text(json.dumps(meta))
    return shard


def test_merge_skips_foreign_files_and_refuses_a_missing_cell(planted, tmp_path):
    run, cells = planted["run"], planted["cells"]
    sharded = tmp_path / "sweep"
    shard = _as_shard(run, sharded)
    proc = _cli(planted, "merge", str(sharded))
    assert proc.returncode == 0, proc.stderr
    _warned(proc.stderr, shard)
    merged, skipped = scan_cells(sharded / "cells")
    assert sorted(r.cell_id for r in merged) == sorted(cells) and not skipped
    # A cell whose only record is unreadable is missing: the merge says so, and which file it skipped.
    (shard / "cells" / f"{cells[2]}.json").write_text('{"cell_id": ')
    refused = _cli(planted, "merge", str(sharded))
    assert refused.returncode == 2
    assert f"{shard / 'cells' / cells[2]}.json: not JSON" in refused.stderr
    assert f"planned cells have no record: {cells[2]}" in refused.stderr


def test_push_skips_foreign_files_and_uploads_none_of_them(planted, tmp_path):
    copy = tmp_path / planted["run"].name
    shutil.copytree(planted["run"], copy)  # a push records itself in run.json: keep the shared run as is
    env = {
        "HF_ENDPOINT": "",
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_foreignFilesTestTokenNeverShown",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    with FakeHub() as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        proc = _cli(planted, "push", str(copy), "--repo", "bench-org/x", env=env)
        assert proc.returncode == 0, proc.stderr
        (commit,) = hub.commits("bench-org/x")
    _warned(proc.stderr, copy)
    assert "not uploaded" in proc.stderr
    (full,) = [content for name, content in commit["files"].items() if name.startswith("full/")]
    rows = [json.loads(line) for line in full.decode().splitlines()]
    assert sorted(r["cell_id"] for r in rows) == sorted(planted["cells"])
    for name, content in commit["files"].items():
        assert MISNAMED.encode() not in content and JUNK[:64] not in content, name


def test_scan_cells_names_each_file_and_why(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    cell = {
        "index": 0,
        "name": "sdpa/eager-mode b1 s8 n4",
        "model": "synthetic:llama-tiny",
        "dtype": "float32",
    }
    cell |= {"device": "cpu", "attn_implementation": "sdpa", "batch_size": 1, "sequence_length": 8}
    good = {"cell_id": "a1", "status": "ok", "cell": {**cell, "num_tokens_to_generate": 4}}
    (cells / "a1.json").write_text(json.dumps(good))
    (cells / "b2.json").write_text(json.dumps({**good, "cell_id": "a1"}))
    (cells / "c3.json").write_text("[1, 2]")
    (cells / "d4.json").write_text('{"cell_id": "d4", "sta')
    (cells / "e5.json").write_bytes(JUNK)
    (cells / "readme.md").write_text("hi")
    (cells / "sub.json").mkdir()
    (cells / ".a1.json.x.tmp").write_text("{")  # an atomic write cut short: not foreign
    records, skipped = scan_cells(cells)
    assert [(r.cell_id, r.status, r.cell.name) for r in records] == [("a1", "ok", cell["name"])]
    why = {s.path.name: s.reason for s in skipped}
    assert why["b2.json"] == "cell_id a1 does not match the file name"
    assert why["c3.json"] == "not a tfbench cell record"
    assert why["d4.json"].startswith("not JSON: ")
    assert why["e5.json"] == "not JSON: not UTF-8 text"
    for name in ("readme.md", "sub.json"):
        assert why[name].startswith("not a cell record"), name
    assert sorted(why) == ["b2.json", "c3.json", "d4.json", "e5.json", "readme.md", "sub.json"]
    assert scan_cells(tmp_path / "missing") == ([], [])
