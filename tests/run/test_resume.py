"""Resume and attempts: a restarted container continues its run, never records a cell twice,
retries interrupted and failed cells within max_attempts, and leaves finished runs alone."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bench.results.records import CellRecord
from bench.run.resume import charged_attempts, identity_differences, needs_run, previous_attempts
from tests.conftest import cells_by_id, plan_cells, run_entrypoint, start_entrypoint, wait_for, write_config

CELL = {"name": "sdpa/eager-mode b1 s8 n4", "model": "synthetic:llama-tiny", "dtype": "float32"}
CELL |= {"device": "cpu", "attn_implementation": "sdpa", "batch_size": 1, "sequence_length": 8}
CELL |= {"num_tokens_to_generate": 4}


def _rec(status: str, *history: str, **extra: Any) -> CellRecord:
    return CellRecord.model_validate(
        {
            "cell_id": "c",
            "cell": CELL,
            "status": status,
            "attempt": len(history) + 1,
            "attempts": [{"attempt": i + 1, "status": s} for i, s in enumerate(history)],
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("record", "max_attempts", "runs"),
    [
        (None, 1, True),
        (_rec("ok"), 5, False),
        (_rec("skipped"), 5, False),
        (_rec("failed"), 1, False),
        (_rec("failed"), 2, True),
        (_rec("timeout", "oom"), 2, False),
        (_rec("interrupted"), 1, True),  # an orderly stop is not the cell's fault
        (_rec("interrupted", "interrupted", "interrupted"), 1, True),
        (_rec("failed", "interrupted", "interrupted"), 2, True),
        (_rec("running"), 1, False),  # killed mid-cell: the attempt is lost, and charged
        (_rec("running"), 2, True),
        (_rec("running", "lost"), 2, False),
    ],
)
def test_needs_run(record, max_attempts, runs):
    assert needs_run(record, max_attempts) is runs


def test_history_carries_every_earlier_attempt():
    rec = _rec("running", "interrupted", "failed", started_at="t")
    history = previous_attempts(rec)
    assert [h["status"] for h in history] == ["interrupted", "failed", "lost"]
    assert charged_attempts(rec.with_updates(status="ok", attempts=history)) == 2


def test_identity_differences_name_what_changed():
    a = {"cells": "x", "settings": {"seed": 0}, "hardware": "cuda: NVIDIA H100", "shard": None}
    b = {**a, "hardware": "cuda: NVIDIA A100", "cells": "y"}
    diffs = identity_differences(a, b)
    assert diffs[0] == "the plan (cells or what runs)"
    assert "hardware: 'cuda: NVIDIA H100' then, 'cuda: NVIDIA A100' now" in diffs


def _status(run_dir: Path, cell_id: str) -> str | None:
    try:
        return json.loads((run_dir / "cells" / f"{cell_id}.json").read_text())["status"]
    except (OSError, ValueError):
        return None


def _runs(output: Path) -> list[Path]:
    return sorted(p for p in output.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """Four cells; SIGTERM while the second one runs; then a restart, then one more invocation."""
    base = tmp_path_factory.mktemp("resume")
    config = write_config(base, batch_size=[1, 2, 3, 4])
    cells = plan_cells(config)
    output = base / "results"
    proc = start_entrypoint(config, output, env={"TFBENCH_FAULT": f"{cells[1]['cell_id']}:hang"})
    wait_for(
        lambda: (
            output.exists() and _runs(output) and _status(_runs(output)[0], cells[1]["cell_id"]) == "running"
        )
    )
    run_dir = _runs(output)[0]
    first = cells_by_id(run_dir)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr1 = proc.communicate(timeout=60)
    stop_s = time.monotonic() - t0
    after_stop = cells_by_id(run_dir)
    run_after_stop = json.loads((run_dir / "run.json").read_text())
    second = run_entrypoint(config, output)
    after_resume = cells_by_id(run_dir)
    run_after_resume = json.loads((run_dir / "run.json").read_text())
    snapshot = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    third = run_entrypoint(config, output)
    return {
        "cells": cells,
        "output": output,
        "run_dir": run_dir,
        "first_rc": proc.returncode,
        "stderr1": stderr1,
        "stop_s": stop_s,
        "first": first,
        "after_stop": after_stop,
        "run_after_stop": run_after_stop,
        "second": second,
        "after_resume": after_resume,
        "run_after_resume": run_after_resume,
        "snapshot": snapshot,
        "third": third,
    }


def test_sigterm_stops_promptly_and_records_the_running_cell(interrupted_then_resumed):
    r = interrupted_then_resumed
    assert r["first_rc"] == 143, r["stderr1"]
    assert r["stop_s"] < 10  # well inside Kubernetes' default 30 s grace period
    ids = [c["cell_id"] for c in r["cells"]]
    assert r["after_stop"][ids[0]]["status"] == "ok"
    assert r["after_stop"][ids[1]]["status"] == "interrupted"
    assert ids[2] not in r["after_stop"] and ids[3] not in r["after_stop"]
    assert r["run_after_stop"]["status"] == "interrupted"
    assert r["run_after_stop"]["counts"]["not_run"] == 2


def test_restart_continues_the_same_run_without_redoing_finished_cells(interrupted_then_resumed):
    r = interrupted_then_resumed
    assert r["second"].returncode == 0, r["second"].stderr
    assert "continues" in r["second"].stderr and "1 already done" in r["second"].stderr
    assert _runs(r["output"])[0] == r["run_dir"]
    ids = [c["cell_id"] for c in r["cells"]]
    done = r["after_resume"]
    assert sorted(done) == sorted(ids)  # every cell exactly once: one file per cell id
    assert all(rec["status"] == "ok" for rec in done.values())
    # The cell finished before the stop was not run again: same worker, same numbers.
    assert done[ids[0]] == r["after_stop"][ids[0]]
    assert done[ids[1]]["attempt"] == 2
    assert [a["status"] for a in done[ids[1]]["attempts"]] == ["interrupted"]
    assert done[ids[2]]["attempt"] == 1 and done[ids[2]]["attempts"] == []
    run = r["run_after_resume"]
    assert run["status"] == "finished" and run["counts"] == {"ok": 4, "not_run": 0}
    assert len(run["invocations"]) == 2
    summary = [json.loads(line) for line in (r["run_dir"] / "summary.jsonl").read_text().splitlines()]
    assert sorted(row["cell_id"] for row in summary) == sorted(ids)
    assert {row["cell_id"]: row["attempt"] for row in summary}[ids[1]] == 2


def test_a_finished_run_is_left_alone_and_the_next_invocation_starts_a_new_one(interrupted_then_resumed):
    r = interrupted_then_resumed
    assert r["third"].returncode == 0, r["third"].stderr
    runs = _runs(r["output"])
    assert len(runs) == 2 and r["run_dir"] in runs
    assert {p: p.stat().st_mtime_ns for p in r["run_dir"].rglob("*") if p.is_file()} == r["snapshot"]
    assert not list(r["run_dir"].rglob(".*.tmp"))
    assert not (r["run_dir"] / "work").exists()


def test_named_run_finished_is_a_no_op_and_a_changed_config_is_refused(tmp_path):
    config = write_config(tmp_path)
    output = tmp_path / "out"
    first = run_entrypoint(config, output, "--run-id", "nightly")
    assert first.returncode == 0, first.stderr
    before = cells_by_id(output / "nightly")
    again = run_entrypoint(config, output, "--run-id", "nightly")
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stderr
    assert cells_by_id(output / "nightly") == before
    changed = run_entrypoint(config, output, "--run-id", "nightly", "--batch-size", "1,2")
    assert changed.returncode == 2
    assert "run nightly" in changed.stderr and "the plan (cells or what runs)" in changed.stderr
    assert "Traceback" not in changed.stderr
    iters = run_entrypoint(config, output, "--run-id", "nightly", "--measurement-iterations", "5")
    assert iters.returncode == 2 and "measurement settings" in iters.stderr


def test_failed_cell_is_retried_up_to_max_attempts(tmp_path):
    config = write_config(tmp_path, batch_size=[1, 2], max_attempts=3)
    cells = plan_cells(config)
    bad = cells[0]["cell_id"]
    proc = run_entrypoint(config, tmp_path / "out", env={"TFBENCH_FAULT": f"{bad}:raise"})
    assert proc.returncode == 1, proc.stderr
    (run_dir,) = _runs(tmp_path / "out")
    records = cells_by_id(run_dir)
    assert records[bad]["status"] == "failed" and records[bad]["attempt"] == 3
    assert [a["status"] for a in records[bad]["attempts"]] == ["failed", "failed"]
    assert records[cells[1]["cell_id"]]["attempt"] == 1
    assert proc.stderr.count("will retry") == 2
    # The good cell ran before the retries: failed cells wait until every cell had a first attempt.
    good_at = records[cells[1]["cell_id"]]["started_at"]
    assert records[bad]["attempts"][0]["started_at"] < good_at < records[bad]["started_at"]


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_cell_running_when_the_runner_was_killed_is_lost_then_retried_within_attempts(tmp_path, max_attempts):
    config = write_config(tmp_path, max_attempts=max_attempts)
    (cell,) = plan_cells(config)
    output = tmp_path / "out"
    proc = start_entrypoint(config, output, env={"TFBENCH_FAULT": f"{cell['cell_id']}:hang"})
    wait_for(
        lambda: (
            output.exists()
            and _runs(output)
            and _status(_runs(output)[0], cell["cell_id"]) == "running"
            # its worker started (the scratch is made just before): a kill can now cost the attempt
            and (_runs(output)[0] / "work" / f"{cell['cell_id']}.1.0").is_dir()
        )
    )
    proc.kill()  # power loss: no handler runs
    proc.communicate(timeout=30)
    (run_dir,) = _runs(output)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    again = run_entrypoint(config, output)
    assert _runs(output) == [run_dir]
    rec = cells_by_id(run_dir)[cell["cell_id"]]
    if max_attempts == 1:
        assert again.returncode == 1, again.stderr
        assert rec["status"] == "lost" and "killed while this cell ran" in rec["reason"]
    else:
        assert again.returncode == 0, again.stderr
        assert rec["status"] == "ok" and rec["attempt"] == 2
        assert [a["status"] for a in rec["attempts"]] == ["lost"]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
