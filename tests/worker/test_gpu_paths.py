"""The GPU measurement paths as the CPU can exercise them: telemetry degrades with a reason, the
roofline record carries the model's arithmetic, and the worker's energy accounting works against
a stand-in NVML (tests/fake_nvml.py, as in tests/worker/test_telemetry.py) whose energy counter moves per run."""

from __future__ import annotations

import json

import pytest

from bench.results.records import Task
from bench.worker.telemetry import Sampler
from tests.conftest import cells_by_id, only_run_dir, run_entrypoint, write_config
from tests.fake_nvml import FakeSetup


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu-paths")
    config = write_config(base, batch_size=2, sequence_length=16, num_tokens_to_generate=6)
    proc = run_entrypoint(config, base / "out")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(base / "out")
    (record,) = cells_by_id(run_dir).values()
    return record, run_dir


def test_telemetry_on_the_cpu_is_unavailable_with_the_reason(cpu_run):
    record, _ = cpu_run
    assert record["gpu_telemetry"] == {
        "available": False,
        "reason": "the cell runs on the CPU (no GPU to sample)",
    }


def test_roofline_counts_are_the_models_and_ratios_null_on_the_cpu(cpu_run):
    record, run_dir = cpu_run
    roof = record["roofline"]
    # llama-tiny: 2 layers, 2 KV heads, head_dim 64 / 4 = 16, float32 -> 2*2*2*16*4 = 512 bytes a token;
    # batch 2, 16 + 6 tokens -> 2 * 22 * 512 = 22528 bytes.
    assert roof["kv_cache_bytes"] == 22528 == record["memory"]["kv_cache_bytes"]
    assert roof["parameters"] == record["parameters"]
    assert roof["decode_mbu"] is None and roof["prefill_mfu"] is None
    assert "cpu" in roof["reason"]
    row = json.loads((run_dir / "summary.jsonl").read_text().splitlines()[0])
    assert (
        row["kv_cache_bytes"] == 22528 and row["decode_mbu"] is None and row["energy_per_token_j_p50"] is None
    )


def test_warmup_check_is_recorded(cpu_run):
    record, _ = cpu_run
    check = record["warmup_check"]
    assert check["first_over_median"] > 0 and isinstance(check["suspect"], bool)


def test_gpu_monitoring_off_says_so(tmp_path):
    config = write_config(tmp_path, gpu_monitoring=False)
    proc = run_entrypoint(config, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    (record,) = cells_by_id(only_run_dir(tmp_path / "out")).values()
    assert record["gpu_telemetry"] == {"available": False, "reason": "gpu_monitoring is off"}


def test_worker_energy_per_run_and_per_token_from_the_counter(monkeypatch, tmp_path):
    from bench.worker import generate

    setup = FakeSetup(monkeypatch, tmp_path, n=1)
    monkeypatch.setattr(
        generate,
        "make_sampler",
        lambda task, device, all_gpus=False: Sampler([0], interval_s=0.01, nvml=setup.spec),
    )
    joules = [2.0, 3.0, 5.0]
    calls = []

    def one_run():
        calls.append(1)
        if len(calls) > 1:  # the warm-up call uses energy too, outside every timed run
            # The worker's own copy of the fake: the one its marks read.
            setup.worker_copy().energy[0] += joules[len(calls) - 2] * 1000.0  # mJ
        return len(calls)

    paths = {"log_path": "-", "scratch_dir": "-", "result_path": "-"}
    task = Task(cell={}, warmup_iterations=1, measurement_iterations=3, gpu_monitoring=True, **paths)
    results, _, telemetry = generate.warm_then_measure(one_run, task, "cpu", lambda *a: None)
    assert results == [2, 3, 4] and telemetry["available"], telemetry
    assert telemetry["mode"] == "process" and telemetry["n_samples"] >= 2
    runs = [{} for _ in results]
    generate.add_energy(telemetry, runs, tokens_per_run=10)
    assert [r["energy_j"] for r in runs] == pytest.approx(joules)
    assert [r["energy_per_token_j"] for r in runs] == pytest.approx([0.2, 0.3, 0.5])
    assert telemetry["energy_per_token_j"]["p50"] == pytest.approx(0.3)
    assert telemetry["energy_per_run_j"]["n"] == 3
