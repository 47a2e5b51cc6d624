"""The parent process stays free of torch; the harness's clock reads a known sleep correctly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cells_by_id, clean_env, only_run_dir, run_entrypoint, write_config

PARENT_CHECK = """
import sys

import pytest
from bench.cli import main
rc = main(["run", "--config", sys.argv[1], "--output", sys.argv[2]])
leaked = sorted(m for m in ("torch", "transformers", "flash_attn") if m in sys.modules)
print("LEAKED=" + ",".join(leaked))
sys.exit(rc)
"""


def test_parent_never_imports_torch(tmp_path):
    config = write_config(tmp_path, batch_size=[1, 2])
    proc = subprocess.run(
        [sys.executable, "-c", PARENT_CHECK, str(config), str(tmp_path / "out")],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "LEAKED=\n" in proc.stdout  # nothing leaked; the worker did all torch work
    run_dir = only_run_dir(tmp_path / "out")
    assert [r["status"] for r in cells_by_id(run_dir).values()] == ["ok", "ok"]


def test_sleep_model_times_are_never_below_the_truth(tmp_path):
    """The sleep model takes at least 50 ms to prefill and 10 ms per token: no clock may read less.

    (How close the readings come to the truth is measured by `make bench`, not asserted here.)
    """
    prefill, decode, n = 0.05, 0.01, 5
    config = write_config(
        tmp_path,
        model="synthetic:sleep",
        attn_implementation="eager",
        model_config={"prefill_sleep_s": prefill, "decode_sleep_s": decode},
        num_tokens_to_generate=n,
        measurement_iterations=3,
    )
    proc = run_entrypoint(config, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    (rec,) = cells_by_id(only_run_dir(tmp_path / "out")).values()
    assert rec["status"] == "ok", rec.get("reason")
    for run in rec["runs"]:
        assert run["ttft"] >= prefill
        assert run["tpot"] >= decode
        gaps = [b - a for a, b in zip(run["token_times"], run["token_times"][1:], strict=False)]
        assert min(gaps) >= decode


def test_run_id_of_a_foreign_directory_is_refused(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "out" / "fixed").mkdir(parents=True)
    (tmp_path / "out" / "fixed" / "notes.txt").write_text("mine")
    proc = run_entrypoint(config, tmp_path / "out", "--run-id", "fixed")
    assert proc.returncode == 2
    assert "is not a tfbench run" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "fixed").iterdir() if not p.name.startswith(".")) == [
        "notes.txt"
    ]


def test_unwritable_output_is_exit_2(tmp_path):
    config = write_config(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_entrypoint(config, blocker / "results")
    assert proc.returncode == 2
    assert "is not writable" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cuda_without_gpu_is_exit_2(tmp_path):
    config = write_config(tmp_path, device="cuda")
    proc = run_entrypoint(config, tmp_path / "out")
    assert proc.returncode == 2
    assert "device is cuda but no NVIDIA GPU is usable" in proc.stderr
    assert "--gpus all" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_run_json_records_config_sources(tmp_path):
    config = write_config(tmp_path)
    proc = run_entrypoint(
        config, tmp_path / "out", "--measurement-iterations", "2", env={"TFBENCH_SEED": "7"}
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads((only_run_dir(tmp_path / "out") / "run.json").read_text())
    assert run["config"]["measurement_iterations"] == 2 and run["config"]["seed"] == 7
    assert run["config_origins"]["measurement_iterations"] == "flag --measurement-iterations"
    assert run["config_origins"]["seed"] == "env TFBENCH_SEED"
    assert run["config_origins"]["model"].startswith("file ")


@pytest.mark.slow
def test_a_compiled_cell_leaves_no_semaphore_behind(tmp_path):
    """torch.compile makes a multiprocessing lock in the worker (tqdm's), which leaves through
    os._exit: that must not leave a named semaphore for the runner's resource tracker to report."""
    config = write_config(tmp_path, compile="default")
    proc = run_entrypoint(config, tmp_path / "out", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = cells_by_id(only_run_dir(tmp_path / "out")).values()
    assert record["status"] == "ok" and record["compiled_graphs"] >= 1, record.get("reason")
    assert "leaked semaphore" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
