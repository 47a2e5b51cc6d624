"""`tfbench v2`: benchmark_v2's command line through the container entry, with real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli.main import main
from bench.config import benchmark_v2 as v2
from tests.conftest import ROOT, clean_env
from tests.hub_server import FakeHub, Repo

MODEL = "synthetic:llama-tiny"
DATASET = "bench-org/benchmark-v2-results"
TOKEN = "hf_v2CliTestTokenThatMustNeverAppear42"
CONFIGS = [
    {"attn_implementation": "eager", "compile_kwargs": None},
    {"attn_implementation": "sdpa", "continuous_batching": True},
    {"attn_implementation": "flex_attention", "continuous_batching": True},  # benchmark_v2 turns CB off
]
FLAGS = [
    "-w",
    "1",
    "-i",
    "2",
    "-b",
    "1",
    "2",
    "-s",
    "16",
    "-n",
    "4",
    "-p",  # one profiled call per cell, as tfbench's `profile`
    "2",
    "--branch-name",
    "main",
    "--commit-id",
    "c0ffee",
]


def _v2(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env(TFBENCH_PROCESSES="1", TFBENCH_DEVICE="cpu", TFBENCH_CELL_TIMEOUT_S="120", **(env or {}))
    return subprocess.run(
        [sys.executable, str(ROOT / "entrypoint.py"), "v2", *args],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One `tfbench v2` run that pushes to a local Hub, then the same command again."""
    tmp = tmp_path_factory.mktemp("v2")
    config = tmp / "configs.jsonl"
    config.write_text("".join(json.dumps(c) + "\n" for c in CONFIGS))
    args = [
        "--model-id",
        MODEL,
        "--config-file",
        str(config),
        *FLAGS,
        "--output-dir",
        "out",
        "--run-id",
        "v2-run",
    ]
    args += ["--push-result-to-dataset", DATASET]
    with FakeHub(token=TOKEN) as hub:
        hub.repos[DATASET] = Repo(DATASET, "dataset", True)  # benchmark_v2 pushes to an existing dataset
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "NO_PROXY": "127.0.0.1,localhost"}
        env["PUSH_TO_HUB_TOKEN"] = TOKEN
        proc = _v2(tmp, *args, env=env)
        again = _v2(tmp, *args, env=env)
        commits = hub.commits(DATASET)
    return tmp, args, proc, again, commits


def _v2_file(out: Path) -> Path:
    (path,) = (out / MODEL.replace("/", "_")).glob("*_benchmark_*.json")
    return path


def test_runs_the_configs_and_writes_both_forms(ran) -> None:
    tmp, _, proc, _, _ = ran
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = tmp / "out"
    run_dir = out / "v2-run"
    run = json.loads((run_dir / "run.json").read_text())
    path = _v2_file(out)
    assert run["benchmark_v2_file"] == path.name
    assert run["measured_commit"]["sha"] == "c0ffee"
    assert path.name.startswith(f"{MODEL}_benchmark_")
    data = json.loads(path.read_text())
    names = [e["config"]["name"] for e in data.values()]
    # benchmark_v2's order: the flags' product outside, the configs inside
    assert names == [
        f"w1_i2-monitored-b{b}_s16_n4-{attn}-uncompiled-unkernelized-{mode}"
        for b in (1, 2)
        for attn, mode in (("eager", "generate"), ("sdpa", "cb"), ("flex_attention", "cb"))
    ]
    for key, entry in data.items():
        assert key == v2.config_hash(entry["config"])
        assert entry["metadata"]["commit_id"] == "c0ffee" and entry["metadata"]["branch_name"] == "main"
        ok = entry["config"]["attn_implementation"] != "flex_attention"
        assert entry["metadata"]["success"] is ok
        assert len(entry["measurements"]["e2e_latency"]) == (2 if ok else 0)
        assert entry["measurements"]["gpu_metrics"] is None and entry["measurements"]["timestamps"] is None


def test_values_come_from_the_records(ran) -> None:
    tmp, _, _, _, _ = ran
    run_dir = tmp / "out" / "v2-run"
    data = json.loads(_v2_file(tmp / "out").read_text())
    records = [json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")]
    by_shape = {
        (r["cell"]["attn_implementation"], r["cell"]["batch_size"]): r for r in records if r["status"] == "ok"
    }
    for entry in data.values():
        c = entry["config"]
        record = by_shape.get((c["attn_implementation"], c["batch_size"]))
        if record is None:
            continue
        assert entry["measurements"]["e2e_latency"] == [run["e2e_latency"] for run in record["runs"]]
        if c["continuous_batching"]:
            firsts = [min(q["token_times"][0] for q in run["requests"]) for run in record["runs"]]
        else:
            firsts = [run["token_times"][0] for run in record["runs"]]
        assert entry["measurements"]["time_to_first_token"] == firsts
        # The last run's tokens are kept and decoded; the earlier run gets its shape alone.
        shape = f"({c['batch_size']}, 4)"
        text = record["output"]["text"]
        assert entry["measurements"]["shape_and_decoded_outputs"] == [shape, f"{shape} | {text}"]
        assert (run_dir / record["profile"]["trace"]).is_file()  # -p 2: tfbench's profile


def test_says_what_benchmark_v2_would_have_rewritten(ran) -> None:
    _, _, proc, _, _ = ran
    assert (
        "benchmark_v2 would rewrite w1_i2-monitored-b1_s16_n4-flex_attention-uncompiled-unkernelized-cb"
        in proc.stderr
    )
    assert "continuous batching turned off (flex_attention); tfbench skips it" in proc.stderr
    assert "shape_and_decoded_outputs: '(rows, n) | text' for each cell's last timed run" in proc.stderr


def test_pushes_benchmark_v2s_two_files_in_one_commit(ran) -> None:
    tmp, _, proc, again, commits = ran
    (commit,) = commits  # the second invocation finds it pushed already
    ts = _v2_file(tmp / "out").stem.split("_benchmark_")[1]
    files = commit["files"]
    assert sorted(files) == [
        f"full_results/benchmark_run_{ts}.jsonl",
        f"summarized_results/benchmark_run_{ts}.jsonl",
    ]
    summarized = [
        json.loads(line)
        for line in files[f"summarized_results/benchmark_run_{ts}.jsonl"].decode().split("\n")
    ]
    local = json.loads(_v2_file(tmp / "out").read_text())
    assert [row["benchmark_config_hash"] for row in summarized] == list(local)
    assert [list(row) for row in summarized] == [
        ["benchmark_config_hash", "config", "measurements", "metadata"]
    ] * 6
    full = [json.loads(line) for line in files[f"full_results/benchmark_run_{ts}.jsonl"].decode().split("\n")]
    assert full[0]["measurements"]["timestamps"][0][0][-1] == full[0]["measurements"]["e2e_latency"][0]
    assert "already pushed" in again.stderr
    assert TOKEN not in proc.stderr + proc.stdout + again.stderr + again.stdout
    run = json.loads((tmp / "out" / "v2-run" / "run.json").read_text())
    assert run["benchmark_v2_pushed"]["repo"] == DATASET and TOKEN not in json.dumps(run)


def test_the_same_command_again_finds_the_run_finished_and_keeps_the_file(ran) -> None:
    tmp, _, _, again, _ = ran
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stderr
    (path,) = (tmp / "out" / MODEL).glob("*.json")  # rewritten in place, not a second file


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-b", "1", "-s", "8", "-n", "4"], "--model-id is required"),
        (["--model-id", MODEL, "-b", "1", "-n", "4"], "--sequence-length/-s required"),
        (
            ["--model-id", MODEL, "-b", "1", "-s", "8", "-n", "1"],
            "--num-tokens-to-generate 1: allowed: integers > 1",
        ),
        (
            ["--model-id", MODEL, "-b", "1", "-s", "8", "-n", "4", "--enable-tp"],
            "--enable-tp: tensor-parallel",
        ),
        (
            ["--model-id", MODEL, "-b", "1", "-s", "8", "-n", "4", "--config-file", "nope.jsonl"],
            "no such file",
        ),
        (["--model-id", MODEL, "-b", "1", "-s", "8", "-n", "4", "--level", "-1"], "--level -1"),
        (["--model-id", MODEL, "-b", "1", "-s", "8", "-n", "4", "-p", "-1"], "profile = -1"),
    ],
)
def test_mistakes_exit_2_before_anything_runs(
    tmp_path: Path, monkeypatch, capsys, args: list[str], words: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["v2", *args]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "benchmark_results").exists()


def test_a_tp_config_exits_2_naming_the_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.jsonl").write_text(
        '{"attn_implementation": "sdpa"}\n{"attn_implementation": "sdpa", "tp_plan": "auto"}\n'
    )
    code = main(["v2", "--model-id", MODEL, "-b", "1", "-s", "8", "-n", "4", "--config-file", "c.jsonl"])
    assert code == 2
    assert 'c.jsonl line 2: tp_plan = "auto"' in capsys.readouterr().err


# benchmark_v2's own classes read what tfbench wrote. Their code is not kept here (it is not on
# PyPI, and nothing of it is vendored): set TFBENCH_BENCHMARK_V2_UPSTREAM to a directory holding
# current/benchmark_v2/framework/{benchmark_config,data_classes,hardware_metrics}.py, laid out as
# tests/fixtures/benchmark_v2/README.md says, to run this check.
UPSTREAM = os.environ.get("TFBENCH_BENCHMARK_V2_UPSTREAM")
LOAD_WITH_UPSTREAM = r"""
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
import framework.benchmark_config as config_module
import framework.data_classes as data
import framework.hardware_metrics as hardware
for module in (config_module, data, hardware):  # CPU-only torch: take benchmark_v2's own fallback
    if hasattr(module, "is_torch_accelerator_available"):
        module.is_torch_accelerator_available = lambda: False
out = []
for path in sys.argv[2:]:
    for key, entry in json.loads(open(path).read()).items():
        as_written = config_module.BenchmarkConfig.from_dict(json.loads(json.dumps(entry["config"])), skip_validity_check=True)
        config = config_module.BenchmarkConfig.from_dict(json.loads(json.dumps(entry["config"])))
        result = data.BenchmarkResult.from_dict(entry["measurements"])
        gpu = [hardware.GPURawMetrics.from_dict(g) for g in entry["measurements"]["gpu_metrics"] or []]
        out.append({"key": key, "hash": as_written.hash, "to_dict": as_written.to_dict(), "rewritten": config.hash != key, "iterations": len(result.e2e_latency), "gpu": len(gpu)})
print(json.dumps(out))
"""


@pytest.mark.skipif(
    not UPSTREAM, reason="TFBENCH_BENCHMARK_V2_UPSTREAM is not set (benchmark_v2's code is not vendored)"
)
def test_benchmark_v2s_own_classes_load_what_tfbench_wrote(ran, tmp_path: Path) -> None:
    from bench.results import benchmark_v2 as v2_results
    from bench.results.store import open_run

    tmp, _, _, _, _ = ran
    local = _v2_file(tmp / "out")
    run = open_run(tmp / "out" / "v2-run")
    m = v2.matrix(tmp / "configs.jsonl", 1, 1, 2, [1, 2], [16], [4], True, False)
    full = tmp_path / "full.json"
    full.write_text(
        json.dumps(v2_results.entries(m, run.records(), run.meta, MODEL, "main", "c0ffee", None, full=True))
    )
    framework = Path(UPSTREAM) / "current" / "benchmark_v2"
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_UPSTREAM, str(framework), str(local), str(full)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    written = json.loads(local.read_text())
    assert len(loaded) == 2 * len(written)
    for item in loaded:
        entry = written[item["key"]]
        assert item["hash"] == item["key"]  # BenchmarkConfig.from_dict(config).hash is the key
        assert item["to_dict"] == entry["config"]
        # ... unless benchmark_v2's rewrites change the config: only where tfbench said so
        flex_cb = (
            entry["config"]["attn_implementation"] == "flex_attention"
            and entry["config"]["continuous_batching"]
        )
        assert item["rewritten"] is flex_cb
        assert item["iterations"] == len(entry["measurements"]["e2e_latency"])
    assert sum(item["gpu"] for item in loaded) == 2 * 4  # full rows: no_gpus_available per iteration
