"""A cell that fails in any way ends only that cell; each failure is told apart and recorded."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import (
    cells_by_id,
    descendants,
    only_run_dir,
    plan_cells,
    run_entrypoint,
    start_entrypoint,
    write_config,
)

# One cell per fault, with healthy cells between them; "hang" sits in the middle so that the
# cells after a timeout are seen to run.
FAULTS = [None, "raise", "oom", "segv", "hang", "kill", "exit", None]
TIMEOUT_S = 12  # a healthy cell takes 2-3 s alone, more beside the other test worker


def _process_group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces) start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        state, pg = fields[0], int(fields[2])
        if pg == pgid and state != "Z":
            members.append(int(entry.name))
    return members


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    config = write_config(base, batch_size=list(range(1, len(FAULTS) + 1)), cell_timeout_s=TIMEOUT_S)
    cells = plan_cells(config)
    spec = ",".join(f"{c['cell_id']}:{fault}" for c, fault in zip(cells, FAULTS) if fault)
    output = base / "results"
    proc = run_entrypoint(config, output, env={"TFBENCH_FAULT": spec})
    run_dir = only_run_dir(output)
    records = cells_by_id(run_dir)
    by_fault = {fault or f"ok{i}": records[c["cell_id"]] for i, (c, fault) in enumerate(zip(cells, FAULTS))}
    return {"proc": proc, "run_dir": run_dir, "by_fault": by_fault}


def test_exit_code_one_and_every_cell_recorded(faulty_run):
    proc = faulty_run["proc"]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(cells_by_id(faulty_run["run_dir"])) == len(FAULTS)
    run = json.loads((faulty_run["run_dir"] / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["counts"] == {"ok": 2, "failed": 4, "oom": 1, "timeout": 1, "not_run": 0}


def test_healthy_cells_before_and_after_faults(faulty_run):
    assert faulty_run["by_fault"]["ok0"]["status"] == "ok"
    assert faulty_run["by_fault"]["ok7"]["status"] == "ok"


def test_python_error(faulty_run):
    rec = faulty_run["by_fault"]["raise"]
    assert rec["status"] == "failed"
    assert rec["error"]["kind"] == "python"
    assert rec["error"]["type"] == "RuntimeError"
    assert "fault injected" in rec["reason"]
    assert "inject_fault" in rec["error"]["traceback"]


def test_out_of_memory(faulty_run):
    rec = faulty_run["by_fault"]["oom"]
    assert rec["status"] == "oom"
    assert rec["error"]["kind"] == "oom"
    assert rec["error"]["type"] == "MemoryError"


def test_crash_by_signal(faulty_run):
    for fault, name in (("segv", "SIGSEGV"), ("kill", "SIGKILL")):
        rec = faulty_run["by_fault"][fault]
        assert rec["status"] == "failed", rec
        assert rec["error"]["kind"] == "crash"
        assert rec["error"]["signal"] == name
        assert name in rec["reason"]


def test_exit_without_result(faulty_run):
    rec = faulty_run["by_fault"]["exit"]
    assert rec["status"] == "failed"
    assert rec["error"] == {**rec["error"], "kind": "crash", "exit_code": 7}
    assert "exited with code 7 without a result" in rec["reason"]


def test_timeout_kills_the_whole_process_group(faulty_run):
    rec = faulty_run["by_fault"]["hang"]
    assert rec["status"] == "timeout"
    assert f"cell_timeout_s={TIMEOUT_S}" in rec["reason"]
    assert rec["duration_s"] >= TIMEOUT_S
    # The worker led its own group, with a `sleep` child in it: nothing of it may survive.
    assert _process_group_members(rec["worker_pid"]) == []


def test_no_half_written_files(faulty_run):
    run_dir = faulty_run["run_dir"]
    assert not list(run_dir.rglob("*.tmp"))
    for path in (run_dir / "cells").glob("*.json"):
        json.loads(path.read_text())
    assert len((run_dir / "summary.jsonl").read_text().splitlines()) == len(FAULTS)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_the_run_in_order(tmp_path, sig, code):
    config = write_config(tmp_path, batch_size=[1, 2, 3], cell_timeout_s=600)
    cells = plan_cells(config)
    hang = cells[1]
    output = tmp_path / "results"
    proc = start_entrypoint(config, output, env={"TFBENCH_FAULT": f"{hang['cell_id']}:hang"})
    # Wait until the hanging cell's worker is running, then stop the run.
    deadline = time.monotonic() + 120
    log = None
    while time.monotonic() < deadline:
        runs = list(output.glob("*/logs")) if output.exists() else []
        log = runs[0] / f"{hang['cell_id']}.log" if runs else None
        if log is not None and log.exists():
            break
        time.sleep(0.1)
    assert log is not None and log.exists(), "the hanging cell never started"
    time.sleep(1.0)
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    run_dir = only_run_dir(output)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert run["interrupted_by"] == signal.Signals(sig).name
    assert run["counts"] == {"ok": 1, "interrupted": 1, "not_run": 1}
    records = cells_by_id(run_dir)
    assert records[hang["cell_id"]]["status"] == "interrupted"
    assert cells[2]["cell_id"] not in records
    assert _process_group_members(records[hang["cell_id"]]["worker_pid"]) == []
    assert len((run_dir / "summary.jsonl").read_text().splitlines()) == 2


def test_worker_dies_with_a_killed_runner(tmp_path):
    """SIGKILL of the runner (no chance to clean up) must not leave a worker running on its own."""
    config = write_config(tmp_path, cell_timeout_s=600)
    (cell,) = plan_cells(config)
    output = tmp_path / "results"
    proc = start_entrypoint(config, output, env={"TFBENCH_FAULT": f"{cell['cell_id']}:hang"})
    deadline = time.monotonic() + 120
    worker = None
    while time.monotonic() < deadline and worker is None:
        # Below this runner only: another test may hang a worker of its own meanwhile.
        for pid in descendants(proc.pid):
            entry = Path("/proc") / str(pid)
            try:
                cmd = (entry / "cmdline").read_bytes()
                # The hanging worker's helper: `sleep 3600` in the worker's process group.
                if cmd == b"sleep\x003600\x00":
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    worker = int(stat[2])  # its process group id is the worker's pid
            except OSError:
                continue
        time.sleep(0.2)
    assert worker is not None, "the hanging worker never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _process_group_members(worker):
        time.sleep(0.2)
    # The worker and its helper are gone: the worker's group was killed, not left running.
    assert _process_group_members(worker) == []
