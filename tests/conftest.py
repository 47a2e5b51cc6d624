"""Shared helpers: configs written on the spot, the appliance run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# A tiny synthetic Llama: fast enough that a cell takes well under a second on 2 cores.
TINY = {
    "model": "synthetic:llama-tiny",
    "device": "cpu",
    "batch_size": 1,
    "sequence_length": 16,
    "num_tokens_to_generate": 6,
    "warmup_iterations": 1,
    "measurement_iterations": 3,
    "attn_implementation": "sdpa",
    "cell_timeout_s": 120,
    "max_attempts": 1,  # tests of retries set it themselves
    "processes": 1,  # one worker per cell keeps the suite fast; tests of replication set it themselves
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFBENCH_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def write_config(directory: Path, name: str = "config.yaml", **fields: Any) -> Path:
    path = directory / name
    data = {**TINY, **fields}
    path.write_text(yaml.safe_dump(data) if name.endswith((".yaml", ".yml")) else json.dumps(data))
    return path


def start_entrypoint(
    config: Path, output: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """The container entry as a running process (stdout and stderr piped), with a clean environment."""
    environ = clean_env(TFBENCH_CONFIG=str(config), TFBENCH_OUTPUT=str(output))
    environ.update(env or {})
    return subprocess.Popen(
        [sys.executable, str(ROOT / "entrypoint.py"), *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config.parent,
    )


def run_entrypoint(
    config: Path, output: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = start_entrypoint(config, output, *args, env=env)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def process_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def descendants(root: int) -> dict[int, str]:
    """Every live process below `root`, with its start time (to tell a reused pid apart)."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := process_stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found, todo = {}, [root]
    while todo:
        for pid, start in parents.get(todo.pop(), []):
            found[pid] = start
            todo.append(pid)
    return found


def wait_for(predicate: Any, timeout: float = 120.0) -> None:
    """Poll until predicate() is true (a run reaching some state in another process)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def only_run_dir(output: Path) -> Path:
    runs = [p for p in output.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def cells_by_id(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")}


def plan_cells(config: Path) -> list[dict[str, Any]]:
    """The plan's cells as the runner will see them (computed in-process, no torch)."""
    from bench.config.sources import load_configs
    from bench.plan.matrix import Capabilities, build_plan

    (loaded,) = load_configs(config, environ={})
    return [c.to_dict() for c in build_plan(loaded.config, Capabilities("cpu", False, False)).cells]


@pytest.fixture
def tiny_config(tmp_path: Path):
    def make(**fields: Any) -> Path:
        return write_config(tmp_path, **fields)

    return make


def race(calls: list[Any]) -> list[Any]:
    """Run `calls` at the same moment on threads of their own; their results in order."""
    import threading

    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results
