"""tfbench's records in benchmark_v2's formats: definitions, and the bytes benchmark_v2 writes
(tests/fixtures/benchmark_v2: a results file and Hub rows made by benchmark_v2's own code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.config import benchmark_v2 as v2
from bench.plan.matrix import Cell
from bench.results import benchmark_v2 as r
from bench.results.records import CellRecord, RunMeta
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "benchmark_v2"


def _cell(cb: bool = False, n: int = 4) -> Cell:
    return Cell(
        cell_id="c" * 16,
        name="x",
        model="org/m",
        dtype="bfloat16",
        device="cpu",
        attn_implementation="sdpa",
        continuous_batching=cb,
        batch_size=2,
        sequence_length=8,
        num_tokens_to_generate=n,
    )


def _record(runs: list[dict], cb: bool = False, status: str = "ok") -> CellRecord:
    settings = {"warmup_iterations": 1, "measurement_iterations": len(runs), "gpu_monitoring": True}
    return CellRecord(
        cell_id="c" * 16,
        status=status,
        cell=_cell(cb),
        runs=runs,
        settings=settings,
        finished_at="2026-12-02T10:00:00.123+00:00",
    )


def test_generate_iterations_use_benchmark_v2s_definitions() -> None:
    run = {"e2e_latency": 1.0, "token_times": [0.2, 0.4, 0.6, 0.8]}
    m = r.measurements(_record([run]), full=True)
    assert m["e2e_latency"] == [1.0]
    assert m["time_to_first_token"] == [0.2]
    # (end of the call - first token) / n: the streamer's end() is the last column
    assert m["inter_token_latency"] == [pytest.approx(0.8 / 4)]
    assert m["timestamps"] == [[[0.2, 0.4, 0.6, 0.8, 1.0]]]
    assert m["gpu_metrics"] == [
        {
            "utilization": [],
            "memory_used": [],
            "timestamps": [],
            "timestamp_0": 0.0,
            "monitoring_status": "no_gpus_available",
        }
    ]
    assert m["shape_and_decoded_outputs"] == []
    summarized = r.measurements(_record([run]), full=False)
    assert summarized["gpu_metrics"] is None and summarized["timestamps"] is None


def test_continuous_batching_takes_the_earliest_first_token_and_the_mean_itl() -> None:
    requests = [{"token_times": [0.3, 0.5, 0.7, 0.9]}, {"token_times": [0.1, 0.4, 0.7, 1.0]}]
    m = r.measurements(_record([{"e2e_latency": 1.1, "requests": requests}], cb=True), full=True)
    assert m["time_to_first_token"] == [0.1]
    assert m["inter_token_latency"] == [pytest.approx((0.6 / 3 + 0.9 / 3) / 2)]
    assert m["timestamps"] == [[[0.3, 0.5, 0.7, 0.9], [0.1, 0.4, 0.7, 1.0]]]


def test_a_cell_that_did_not_measure_has_empty_lists() -> None:
    for full, stamps in ((True, []), (False, None)):
        m = r.measurements(_record([], status="skipped"), full=full)
        assert m["e2e_latency"] == [] and m["gpu_metrics"] is None and m["timestamps"] == stamps


@pytest.mark.parametrize("path", sorted((FIXTURES / "results").glob("*/*.json")), ids=lambda p: p.parent.name)
def test_the_results_file_text_is_benchmark_v2s(path: Path) -> None:
    text = path.read_text()
    assert r.results_text(json.loads(text)) == text


def test_hub_files_are_benchmark_v2s_bytes() -> None:
    path = next((FIXTURES / "results").glob("meta-llama*/*.json"))
    full = json.loads(path.read_text())
    summarized = {
        k: {**e, "measurements": {**e["measurements"], "gpu_metrics": None, "timestamps": None}}
        for k, e in full.items()
    }
    ts = path.stem.split("_benchmark_")[1]
    files = r.hub_files(full, summarized, ts)
    assert sorted(files) == [
        f"full_results/benchmark_run_{ts}.jsonl",
        f"summarized_results/benchmark_run_{ts}.jsonl",
    ]
    for name, content in files.items():
        assert content == (FIXTURES / "hub" / name).read_bytes()
        assert not content.endswith(b"\n")


def test_entries_follow_benchmark_v2s_order_and_leave_out_cells_not_run() -> None:
    m = v2.matrix(None, 1, 1, 2, [1, 2], [8], [4], True, False)
    eager = next(c for c in m.combos if c.attn_implementation == "eager")
    cell = Cell(
        **{
            **_cell().__dict__,
            "attn_implementation": "eager",
            "compile": eager.compile,
            "compile_fullgraph": True,
            "batch_size": 2,
        }
    )
    record = CellRecord(
        cell_id=cell.cell_id,
        status="ok",
        cell=cell,
        runs=[{"e2e_latency": 1.0, "token_times": [0.5, 0.6, 0.7, 0.8]}],
    )
    meta = RunMeta(
        run_id="x",
        started_at="2026-12-02T10:00:00+00:00",
        environment={"python": "3.11", "packages": {"torch": "2.13"}},
    )
    data = r.entries(m, [record], meta, "org/m", "main", "abc", "msg")
    (key, entry), *rest = data.items()
    assert not rest
    assert (
        entry["config"]["name"]
        == "w1_i2-monitored-b2_s8_n4-eager-compiled_reduce-overhead-unkernelized-generate"
    )
    assert key == v2.config_hash(entry["config"])
    assert entry["metadata"] == {
        "model_id": "org/m",
        "timestamp": "2026-12-02T10:00:00.000000+00:00",
        "branch_name": "main",
        "commit_id": "abc",
        "commit_message": "msg",
        "hardware_info": {
            "gpu_name": None,
            "gpu_memory_total_gb": None,
            "python_version": "3.11",
            "torch_version": "2.13",
        },
        "success": True,
    }


def test_the_file_is_named_as_benchmark_v2_names_it(tmp_path: Path) -> None:
    path = r.results_path(tmp_path, "meta-llama/Llama-3.1-8B", "20261202_101500")
    assert (
        path
        == tmp_path / "meta-llama_Llama-3.1-8B" / "meta-llama_Llama-3.1-8B_benchmark_20261202_101500.json"
    )
    assert len(r.file_timestamp("2026-12-02T10:15:00.000+00:00")) == len("20261202_101500")
