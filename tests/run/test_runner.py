"""Replication across processes: each cell measured in several fresh workers, interleaved with the
other cells' processes, its record keeping the grouping; a failed process costs only itself."""

from __future__ import annotations

import json
import signal

from tests.conftest import (
    cells_by_id,
    only_run_dir,
    plan_cells,
    run_entrypoint,
    start_entrypoint,
    wait_for,
    write_config,
)


def _processes(rec):
    return sorted(rec["processes"], key=lambda p: p["index"])


def test_each_cell_is_measured_in_its_own_processes_interleaved(tmp_path):
    cfg = write_config(tmp_path, processes=3, measurement_iterations=5, batch_size=[1, 2])
    out = tmp_path / "out"
    proc = run_entrypoint(cfg, out)
    assert proc.returncode == 0, proc.stderr
    run = only_run_dir(out)
    records = cells_by_id(run)
    starts = []
    for rec in records.values():
        assert rec["status"] == "ok"
        procs = _processes(rec)
        # 5 timed runs shared out over 3 processes: 2, 2, 1; each process warmed up on its own.
        assert [p["runs"] for p in procs] == [2, 2, 1]
        assert all(p["warmup_time_s"] is not None and p["load_time_s"] is not None for p in procs)
        assert len({p["pid"] for p in procs}) == 3
        assert [r["process"] for r in rec["runs"]] == [0, 0, 1, 1, 2]
        assert {r["pid"] for r in rec["runs"]} == {p["pid"] for p in procs}
        tpot = rec["stats"]["tpot"]
        assert tpot["n"] == 5 and len(tpot["process_p50s"]) == 3 and tpot["process_cv"] >= 0
        starts += [(p["started_at"], p["index"], rec["cell"]["index"]) for p in procs]
    # Round-robin: process 0 of every cell, then process 1 of every cell, then process 2.
    assert [(k, c) for _, k, c in sorted(starts)] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    rows = [json.loads(line) for line in (run / "summary.jsonl").read_text().splitlines()]
    assert {r["processes"] for r in rows} == {3}
    assert all(len(r["tpot_process_p50s"]) == 3 and r["tpot_process_cv"] is not None for r in rows)
    meta = json.loads((run / "run.json").read_text())
    assert meta["identity"]["settings"]["processes"] == 3


def test_the_default_never_gives_a_process_no_timed_run(tmp_path):
    cfg = write_config(tmp_path, measurement_iterations=2)  # TINY says processes: 1
    text = cfg.read_text().replace("processes: 1\n", "")
    cfg.write_text(text)
    out = tmp_path / "out"
    proc = run_entrypoint(cfg, out)
    assert proc.returncode == 0, proc.stderr
    (rec,) = cells_by_id(only_run_dir(out)).values()
    assert [p["runs"] for p in _processes(rec)] == [1, 1]


def test_more_processes_than_timed_runs_is_refused(tmp_path):
    cfg = write_config(tmp_path, processes=4, measurement_iterations=3)
    proc = run_entrypoint(cfg, tmp_path / "out")
    assert proc.returncode == 2
    assert "processes = 4" in proc.stderr and "measurement_iterations is 3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_stopped_run_keeps_the_measured_processes_and_runs_only_the_missing_ones(tmp_path):
    cfg = write_config(tmp_path, processes=3, measurement_iterations=3)
    (cell,) = plan_cells(cfg)
    cid, out = cell["cell_id"], tmp_path / "out"
    proc = start_entrypoint(cfg, out, "--run-id", "r1", env={"TFBENCH_FAULT": f"{cid[:8]}@1:hang"})
    # Process 1 has started (its scratch is made just before the worker): stop the run there.
    wait_for(lambda: (out / "r1" / "work" / f"{cid}.1.1").is_dir())
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    rec = cells_by_id(out / "r1")[cid]
    assert rec["status"] == "interrupted" and [p["index"] for p in rec["processes"]] == [0]
    again = run_entrypoint(cfg, out, "--run-id", "r1")
    assert again.returncode == 0, again.stderr
    rec = cells_by_id(out / "r1")[cid]
    assert rec["status"] == "ok" and rec["attempt"] == 2
    assert [a["status"] for a in rec["attempts"]] == ["interrupted"]
    procs = _processes(rec)
    assert [(p["index"], p["attempt"]) for p in procs] == [(0, 1), (1, 2), (2, 2)]
    assert sorted(r["process"] for r in rec["runs"]) == [0, 1, 2]  # each process measured once


def test_a_process_that_always_fails_fails_the_cell_with_what_was_measured(tmp_path):
    cfg = write_config(tmp_path, processes=2, measurement_iterations=2, max_attempts=1)
    (cell,) = plan_cells(cfg)
    out = tmp_path / "out"
    proc = run_entrypoint(cfg, out, env={"TFBENCH_FAULT": f"{cell['cell_id'][:8]}@1:raise"})
    assert proc.returncode == 1, proc.stderr
    (rec,) = cells_by_id(only_run_dir(out)).values()
    assert rec["status"] == "failed" and "fault injected" in rec["reason"]
    assert [p["index"] for p in rec["processes"]] == [0]  # process 0's measurement is kept, not judged
    assert "stats" not in rec or not rec["stats"]
