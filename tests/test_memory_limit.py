"""cell_memory_limit_gb: a cell that needs more host memory than allowed ends `oom`, naming the
limit, and the next cell starts clean in a fresh worker.

The tiny Llama with eager attention materializes its attention scores: batch 16 x 4 heads x
2048 x 2048 float32 is 1 GiB per layer, far above a 0.75 GiB limit, while batch 1 needs 64 MiB.
No TFBENCH_FAULT: the allocation that fails is the model's own.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

from tests.conftest import cells_by_id, only_run_dir, plan_cells, run_entrypoint, write_config

LIMIT_GB = 0.75  # the forked worker starts at about 0.33 GiB of private memory (torch mapped)
BIG, SMALL = 16, 1


def _config(directory: Path, **extra):
    return write_config(
        directory,
        batch_size=[BIG, SMALL],
        sequence_length=2048,
        num_tokens_to_generate=2,
        attn_implementation="eager",
        warmup_iterations=0,
        measurement_iterations=1,
        **extra,
    )


def _task(cell: dict, directory: Path, limit_gb: float | None) -> dict:
    """What the runner hands a worker (see Runner._run_cell)."""
    scratch = directory / f"work-{cell['cell_id']}"
    scratch.mkdir()
    return {
        "cell": cell,
        "warmup_iterations": 0,
        "measurement_iterations": 1,
        "seed": 0,
        "trust_remote_code": False,
        "gpu_monitoring": False,
        "gpu_sample_interval_s": 0.05,
        "log_path": str(directory / f"{cell['cell_id']}.log"),
        "scratch_dir": str(scratch),
        "result_path": str(scratch / "result.json"),
        "cell_memory_limit_gb": limit_gb,
    }


def _run_worker(task: dict) -> dict:
    """One worker, forked from the fork server as the runner forks it."""
    from bench.run.workers import worker_context
    from bench.worker.child import main as child_main

    ctx = worker_context()
    receiver, sender = ctx.Pipe(duplex=False)
    guard_r, guard_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, args=(task, sender, guard_r))
    proc.start()
    sender.close()
    guard_r.close()
    proc.join(120)
    guard_w.close()
    receiver.close()
    assert proc.exitcode == 0, (proc.exitcode, Path(task["log_path"]).read_text()[-3000:])
    return json.loads(Path(task["result_path"]).read_text())


def test_worker_over_its_limit_ends_oom_and_the_next_starts_clean(tmp_path):
    big, small = plan_cells(_config(tmp_path))
    assert (big["batch_size"], small["batch_size"]) == (BIG, SMALL)
    over = _run_worker(_task(big, tmp_path, LIMIT_GB))
    assert over["status"] == "oom", over.get("error")
    error = over["error"]
    assert error["kind"] == "oom"
    assert error["type"] == "RuntimeError"
    assert "DefaultCPUAllocator: can't allocate memory" in error["exception_message"]
    assert error["message"].startswith(f"out of host memory under cell_memory_limit_gb={LIMIT_GB:g} (")
    assert error["memory_limit_bytes"] == int(LIMIT_GB * 2**30)
    assert "modeling_llama.py" in error["traceback"]  # the model's own allocation failed

    fine = _run_worker(_task(small, tmp_path, LIMIT_GB))
    assert fine["status"] == "ok", fine.get("error")
    assert fine["worker_pid"] != over["worker_pid"]
    assert fine["memory"]["limit_bytes"] == int(LIMIT_GB * 2**30)


def test_without_a_limit_the_worker_sets_none(tmp_path):
    _, small = plan_cells(_config(tmp_path))
    result = _run_worker(_task(small, tmp_path, None))
    assert result["status"] == "ok", result.get("error")
    assert "limit_bytes" not in result["memory"]


def test_run_with_a_memory_limit(tmp_path):
    # From the environment; a file gives the same field (its sources are tests/config's), and
    # the file form reaches the run's settings as this checks.
    from bench.config.sources import load_configs

    (tmp_path / "f").mkdir()
    (from_file,) = load_configs(_config(tmp_path / "f", cell_memory_limit_gb=LIMIT_GB), environ={})
    assert from_file.config.cell_memory_limit_gb == LIMIT_GB
    config, env = _config(tmp_path), {"TFBENCH_CELL_MEMORY_LIMIT_GB": str(LIMIT_GB)}
    big, small = plan_cells(config)
    proc = run_entrypoint(config, tmp_path / "out", env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    run_dir = only_run_dir(tmp_path / "out")
    records = cells_by_id(run_dir)
    over, fine = records[big["cell_id"]], records[small["cell_id"]]
    assert over["status"] == "oom", over.get("reason")
    assert over["reason"].startswith(
        f"RuntimeError: out of host memory under cell_memory_limit_gb={LIMIT_GB:g}"
    )
    assert fine["status"] == "ok", fine.get("reason")
    assert fine["worker_pid"] != over["worker_pid"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["counts"] == {"ok": 1, "oom": 1, "not_run": 0}
    assert not list(run_dir.rglob("*.tmp"))


def test_is_oom_knows_every_allocator_failure():
    import torch

    from bench.worker.diagnose import is_oom

    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)"
    )
    assert is_oom(cpu)
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:75] DefaultCPUAllocator: not enough memory"))
    assert is_oom(RuntimeError("std::bad_alloc"))
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(MemoryError())
    assert is_oom(OSError(errno.ENOMEM, "Cannot allocate memory"))
    try:
        try:
            raise MemoryError()
        except MemoryError as exc:
            raise ValueError("loading failed") from exc
    except ValueError as wrapped:
        assert is_oom(wrapped)  # an allocation failure a library re-raised as something else
    assert not is_oom(RuntimeError("fault injected by TFBENCH_FAULT"))
    assert not is_oom(OSError(errno.ENOENT, "No such file or directory"))
