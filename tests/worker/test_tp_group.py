"""Tensor-parallel cells on the CPU: world size 2 with gloo, through torch.distributed's elastic
launcher, in one run of the appliance: a cell that measures, a rank that raises, a rank that hangs
until the cell's timeout (and no rank outlives it), next to the same cells without tensor parallelism."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    cells_by_id,
    descendants,
    only_run_dir,
    plan_cells,
    process_stat,
    start_entrypoint,
    write_config,
)

TIMEOUT_S = 20  # a tp2 cell of the tiny model takes about 4 s, more beside the other test worker
# (batch size, fault on rank 1): b1 measures, b2 raises on rank 1, b3 hangs on rank 1.
FAULTS = {1: None, 2: "raise", 3: "hang"}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("tp")
    config = write_config(
        base,
        tp_size=[1, 2],
        batch_size=list(FAULTS),
        sequence_length=8,
        num_tokens_to_generate=4,
        measurement_iterations=2,
        cell_timeout_s=TIMEOUT_S,
    )
    cells = {(c.get("tp_size", 1), c["batch_size"]): c for c in plan_cells(config)}
    spec = ",".join(f"{cells[(2, b)]['cell_id']}#1:{f}" for b, f in FAULTS.items() if f)
    output = base / "results"
    proc = start_entrypoint(config, output, env={"TFBENCH_FAULT": spec})
    seen: dict[int, str] = {}
    sleepers: set[int] = set()

    def watch() -> None:
        # Every process the run starts, as it starts them: ranks, their helpers, the sleeping one.
        while proc.poll() is None:
            for pid, start in descendants(proc.pid).items():
                if pid not in seen:
                    seen[pid] = start
                if "sleep 3600" in _cmdline(pid):
                    sleepers.add(pid)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate(timeout=240)
    watcher.join()
    records = cells_by_id(only_run_dir(output))
    return {
        "rc": proc.returncode,
        "stderr": stderr,
        "records": {key: records[c["cell_id"]] for key, c in cells.items()},
        "seen": seen,
        "sleepers": sleepers,
    }


def test_tp2_cell_is_ok_with_its_group_recorded(tp_run):
    one, two = tp_run["records"][(1, 1)], tp_run["records"][(2, 1)]
    assert one["status"] == "ok" and two["status"] == "ok", two.get("reason")
    assert one["cell"]["name"] == "sdpa, no compile, b1 s8 n4"
    assert two["cell"]["name"] == "sdpa, no compile, b1 s8 n4, tp2"
    assert one.get("tensor_parallel") is None
    tp = two["tensor_parallel"]
    assert (tp["tp_size"], tp["world_size"], tp["backend"]) == (2, 2, "gloo")
    assert 0 < tp["group_startup_s"] <= tp["group_s"]
    ranks = tp["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert len({r["pid"] for r in ranks}) == 2 and all(r["host"] for r in ranks)
    # Each rank on its own share of the worker's cores, with as many threads (one each here).
    assert all(r["torch_threads"] == len(r["cpus"]) for r in ranks)
    if len(os.sched_getaffinity(0)) >= 2:
        assert not set(ranks[0]["cpus"]) & set(ranks[1]["cpus"])
    assert all(r["memory"]["peak_bytes"] > 0 for r in ranks)
    assert two["memory"]["per_rank_peak_bytes"] == [r["memory"]["peak_bytes"] for r in ranks]
    assert two["processes"][0]["group_startup_s"] == tp["group_startup_s"]
    # Rank 0's clock: every timed run with its token times.
    assert len(two["runs"]) == 2 and all(len(r["token_times"]) == 4 for r in two["runs"])
    # The same weights sharded over two ranks generate the same greedy tokens as on one.
    assert two["output"]["sha256"] == one["output"]["sha256"]
    # The roofline counts the whole model, not a rank's shards.
    assert two["roofline"]["parameters"] == one["roofline"]["parameters"]


def test_a_failing_rank_fails_the_cell_with_its_error(tp_run):
    record = tp_run["records"][(2, 2)]
    assert record["status"] == "failed"
    assert record["error"]["kind"] == "rank" and record["error"]["rank"] == 1
    assert "rank 1 of 2 failed" in record["reason"]
    assert "fault injected by TFBENCH_FAULT" in record["reason"]
    assert tp_run["records"][(1, 2)]["status"] == "ok"  # the fault names the tp2 cell's rank only


def test_a_hanging_rank_times_out_and_no_rank_outlives_the_cell(tp_run):
    record = tp_run["records"][(2, 3)]
    assert record["status"] == "timeout"
    assert tp_run["sleepers"], "rank 1 never reached its hang"

    # Everything the run started, the ranks of every tp cell and their helpers, is gone. The fork
    # server the workers came from may take a moment to see its parent's exit: a few seconds' grace.
    def alive() -> set[int]:
        return {
            pid
            for pid, start in tp_run["seen"].items()
            if (s := process_stat(pid)) is not None and s[1] == start
        }

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(), [_cmdline(pid) for pid in alive()]
    assert tp_run["rc"] == 1  # failed and timed-out cells make the run's exit code 1


def test_a_rank_killed_by_a_signal_is_the_cause(tmp_path: Path) -> None:
    # Its peers then fail in a collective and write their errors; the killed rank wrote none.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from bench.worker.tp_group import group_failure

    (tmp_path / "rank-0.error.json").write_text(
        json.dumps(
            {"rank": 0, "pid": 10, "type": "RuntimeError", "message": "Connection closed by peer", "at": 1.0}
        )
    )
    failures = {
        0: ProcessFailure(local_rank=0, pid=10, exitcode=1, error_file=str(tmp_path / "none")),
        1: ProcessFailure(local_rank=1, pid=11, exitcode=-9, error_file=str(tmp_path / "none")),
    }
    exc = group_failure(ChildFailedError("rank", failures), 2, tmp_path)
    assert str(exc).startswith("rank 1 of 2 failed, the group was stopped: killed by SIGKILL")
    assert exc.details["rank"] == 1 and exc.details["exit_code"] == -9
    assert [r["rank"] for r in exc.details["ranks"]] == [0, 1]
    assert exc.details["ranks"][0]["message"] == "Connection closed by peer"


def test_a_local_model_without_a_tp_plan_or_with_odd_heads_is_skipped_by_its_worker(tmp_path: Path) -> None:
    # The parent reads no model config; the worker does, before it launches any rank.
    from transformers import GPT2Config, LlamaConfig

    from bench.worker.tp_group import model_problem

    GPT2Config(n_embd=64, n_layer=1, n_head=4).save_pretrained(tmp_path / "gpt2")
    LlamaConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=3).save_pretrained(
        tmp_path / "llama"
    )

    def cell(model: str, tp: int) -> dict[str, Any]:
        return {"model": str(tmp_path / model), "revision": None, "tp_size": tp}

    assert "has no tp plan in transformers" in (model_problem(cell("gpt2", 2), False) or "")
    assert model_problem(cell("llama", 2), False) == "num_key_value_heads = 3 is not divisible by tp_size 2"
    assert model_problem(cell("llama", 4), False) == "num_attention_heads = 6 is not divisible by tp_size 4"


def test_ranks_split_the_workers_cores_evenly() -> None:
    from bench.worker.rank import rank_cores

    cores = [4, 5, 6, 7, 8]
    assert [rank_cores(cores, r, 2) for r in (0, 1)] == [[4, 5], [6, 7]]  # the odd one out stays idle
    assert rank_cores([3], 1, 2) == [3]  # fewer cores than ranks: they share
