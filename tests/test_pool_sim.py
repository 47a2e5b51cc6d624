"""The GPU pool on simulated GPUs: the appliance as a user runs it, with a fake NVML that lists 4 GPUs
(tests.fake_nvml:gpus4) and workers that run their cuda cells on the CPU. Sleep-model cells, so
that the 2 cores of a CI machine are not what limits them."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime

from bench.config.sources import load_configs
from bench.plan.matrix import Capabilities, build_plan
from tests.conftest import cells_by_id, run_entrypoint, start_entrypoint, wait_for, write_config

SIM = {"TFBENCH_TEST_NVML": "tests.fake_nvml:gpus4"}
SLEEP = {
    "model": "synthetic:sleep",
    "device": "cuda",
    "attn_implementation": "eager",
    "sequence_length": 8,
    "num_tokens_to_generate": 12,
    "warmup_iterations": 1,
    "measurement_iterations": 2,
}
# As many cells at once as there are cores here (4 at most): then their cores are disjoint.
WIDE = min(4, len(os.sched_getaffinity(0)))


def cuda_cells(config):
    (loaded,) = load_configs(config, environ={})
    return [c.to_dict() for c in build_plan(loaded.config, Capabilities("cuda", False, False)).cells]


def when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_cells_run_side_by_side_each_on_its_own_gpu_and_cores_and_a_fault_ends_one(tmp_path):
    cfg = write_config(tmp_path, **SLEEP, batch_size=[1, 2, 3, 4, 5, 6], concurrent_cells=WIDE)
    cells = cuda_cells(cfg)
    killed = cells[1]["cell_id"]
    out = tmp_path / "out"
    proc = run_entrypoint(
        cfg,
        out,
        "--run-id",
        "sim",
        env={**SIM, "TFBENCH_FAULT": f"{killed}:kill", "TFBENCH_LOG_FORMAT": "json"},
    )
    assert proc.returncode == 1, proc.stderr
    records = cells_by_id(out / "sim")
    assert {cid: r["status"] for cid, r in records.items()} == {
        c["cell_id"]: "failed" if c["cell_id"] == killed else "ok" for c in cells
    }, (proc.stderr[-3000:], {cid: r.get("reason") for cid, r in records.items()})
    meta = json.loads((out / "sim" / "run.json").read_text())
    assert meta["concurrency"]["used"] == WIDE and len(meta["concurrency"]["gpus"]) == 4
    spans = []
    for cid, rec in records.items():
        if cid == killed:
            spans.append((when(rec["started_at"]), when(rec["finished_at"]), None, None))
            continue
        (p,) = rec["processes"]
        seen = rec["worker_environment"]
        # The worker saw its own GPU only, by UUID, and ran on the cores it was given.
        assert len(p["gpus"]) == 1 and seen["cuda_visible_devices"] == p["gpus"][0]
        assert p["gpu_names"] == ["NVIDIA H100 80GB HBM3"]
        assert seen["cpu_affinity"] == p["cpus"] and seen["torch_threads"] == len(p["cpus"])
        spans.append((when(p["started_at"]), when(p["finished_at"]), p["gpus"][0], set(p["cpus"])))
    together = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1]]
    assert together, "no two cells ran at the same time"
    for a, b in together:
        if a[2] and b[2]:
            assert a[2] != b[2] and not a[3] & b[3]  # cells never share a GPU nor a core
    # The killed cell ended only itself: cells started after it ended, on the GPUs it left.
    end_of_killed = when(records[killed]["finished_at"])
    assert any(s[0] >= end_of_killed for s in spans if s[2])
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    started = [e for e in events if e["event"] == "cell_started"]
    assert started and all(e.get("gpus") and e.get("cpus") for e in started)


def test_sigterm_stops_every_running_cell_as_interrupted_and_resume_reruns_them(tmp_path):
    cfg = write_config(tmp_path, **SLEEP, batch_size=[1, 2, 3], concurrent_cells=2, max_attempts=1)
    cells = cuda_cells(cfg)
    hung = [c["cell_id"] for c in cells[:2]]
    out = tmp_path / "out"
    proc = start_entrypoint(
        cfg, out, "--run-id", "r1", env={**SIM, "TFBENCH_FAULT": ",".join(f"{c}:hang" for c in hung)}
    )

    def both_running() -> bool:
        recs = cells_by_id(out / "r1") if (out / "r1" / "cells").is_dir() else {}
        return all(recs.get(c, {}).get("status") == "running" for c in hung)

    wait_for(both_running, timeout=120)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    records = cells_by_id(out / "r1")
    assert [records[c]["status"] for c in hung] == ["interrupted", "interrupted"]
    assert cells[2]["cell_id"] not in records or records[cells[2]["cell_id"]]["status"] != "ok"
    again = run_entrypoint(cfg, out, "--run-id", "r1", env=SIM)
    assert again.returncode == 0, again.stderr
    records = cells_by_id(out / "r1")
    assert {r["status"] for r in records.values()} == {"ok"}
    for c in hung:  # rerun, and the interrupted attempt is not charged
        assert [a["status"] for a in records[c]["attempts"]] == ["interrupted"]


def test_a_shard_runs_its_cells_side_by_side_on_every_gpu_it_sees(tmp_path):
    """A Kubernetes pod of job-node.yaml: one shard of the run, every GPU of its node."""
    cfg = write_config(tmp_path, **SLEEP, batch_size=[1, 2, 3, 4, 5, 6], concurrent_cells=WIDE)
    out = tmp_path / "out"
    proc = run_entrypoint(cfg, out, env={**SIM, "TFBENCH_RUN_ID": "node", "TFBENCH_SHARD": "0/2"})
    assert proc.returncode == 0, proc.stderr
    shard = out / "node" / "shards" / "0-of-2"
    meta = json.loads((shard / "run.json").read_text())
    assert meta["concurrency"]["used"] == WIDE and len(meta["concurrency"]["gpus"]) == 4
    spans = [
        (when(p["started_at"]), when(p["finished_at"]), p["gpus"][0])
        for rec in cells_by_id(shard).values()
        for p in rec["processes"]
    ]
    assert len(spans) == 3  # its half of the 6 cells
    together = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1]]
    assert together and all(a[2] != b[2] for a, b in together), spans
