"""A real run through entrypoint.py, as the container runs it: layout, statuses, numbers, processes."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench import SCHEMA_VERSION, __version__
from bench.results.stats import METRICS, STAT_NAMES
from bench.results.summary import summary_columns
from tests.conftest import cells_by_id, only_run_dir, start_entrypoint, write_config

# flex_attention compiles its kernel on first use (about 30 s per cell on 2 cores): it has its
# own test in test_backends.py.
ATTNS = ["eager", "sdpa", "flash_attention_2"]
BATCHES = [1, 2]
N = 6
ITERS = 3
PROFILE = 3


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    config = write_config(
        base,
        attn_implementation=ATTNS,
        batch_size=BATCHES,
        num_tokens_to_generate=N,
        measurement_iterations=ITERS,
        run_name="e2e",
        profile=PROFILE,  # one extra call per cell, after the timed ones
    )
    output = base / "results"
    proc = start_entrypoint(config, output, env={"TFBENCH_COMMIT": "abc123def"})
    stdout, stderr = proc.communicate(timeout=300)
    return {"proc": proc, "stdout": stdout, "stderr": stderr, "run_dir": only_run_dir(output)}


def test_exit_code_and_output(e2e):
    assert e2e["proc"].returncode == 0, e2e["stderr"]
    assert "Traceback" not in e2e["stderr"]
    # Progress goes to stderr, the summary table to stdout.
    assert "cells" in e2e["stderr"]
    for attn in ("eager", "sdpa"):
        assert attn in e2e["stdout"]
    assert "cells without measurements" in e2e["stdout"]
    assert "flash_attention_2 needs a CUDA GPU" in e2e["stdout"]


def test_run_json(e2e):
    run = json.loads((e2e["run_dir"] / "run.json").read_text())
    assert run["run_id"] == e2e["run_dir"].name and run["run_id"].endswith("-e2e")
    assert run["schema_version"] == SCHEMA_VERSION
    assert run["tfbench_version"] == __version__
    assert run["status"] == "finished"
    assert run["started_at"] <= run["finished_at"]
    assert run["counts"] == {"ok": 4, "skipped": 2, "not_run": 0}
    assert run["config"]["attn_implementation"] == ATTNS
    assert len(run["plan"]["cells"]) == len(ATTNS) * len(BATCHES)
    env = run["environment"]
    for key in ("python", "hostname", "cpu", "packages", "gpus", "cuda_available"):
        assert key in env
    assert env["packages"]["torch"].startswith("2.")
    assert env["packages"]["transformers"]
    assert run["measured_commit"] == {"sha": "abc123def", "source": "TFBENCH_COMMIT"}
    assert run["worker_server_start_s"] > 0


def test_cells_and_statuses(e2e):
    cells = cells_by_id(e2e["run_dir"])
    assert len(cells) == 6
    by_attn: dict[str, list[dict]] = {}
    for rec in cells.values():
        by_attn.setdefault(rec["cell"]["attn_implementation"], []).append(rec)
    for attn in ("eager", "sdpa"):
        assert [r["status"] for r in by_attn[attn]] == ["ok", "ok"], [r.get("reason") for r in by_attn[attn]]
    for rec in by_attn["flash_attention_2"]:
        assert rec["status"] == "skipped"
        assert "CUDA GPU" in rec["reason"]
        assert "runs" not in rec


def test_each_cell_in_its_own_process(e2e):
    ok = [r for r in cells_by_id(e2e["run_dir"]).values() if r["status"] == "ok"]
    pids = {r["worker_pid"] for r in ok}
    assert len(pids) == len(ok)
    assert e2e["proc"].pid not in pids
    for rec in ok:
        assert rec["isolation"]["spawn_s"] > 0 and rec["isolation"]["exit_s"] >= 0


def test_inputs_and_token_counts(e2e):
    for rec in cells_by_id(e2e["run_dir"]).values():
        if rec["status"] != "ok":
            continue
        cell = rec["cell"]
        assert rec["inputs"] == {"shape": [cell["batch_size"], 16], "new_tokens": N}
        assert rec["effective_attn_implementation"] == cell["attn_implementation"]
        assert len(rec["runs"]) == ITERS
        for run in rec["runs"]:
            times = run["token_times"]
            assert len(times) == N
            assert all(b > a for a, b in zip(times, times[1:], strict=False))
            assert 0 < times[0] == run["ttft"] <= times[-1] <= run["e2e_latency"]


def test_identity_ttft_tpot_e2e(e2e):
    for rec in cells_by_id(e2e["run_dir"]).values():
        for run in rec.get("runs", []):
            assert math.isclose(run["ttft"] + (N - 1) * run["tpot"], run["e2e_latency"], rel_tol=1e-9)


def test_throughputs_follow_definitions(e2e):
    for rec in cells_by_id(e2e["run_dir"]).values():
        b = rec["cell"]["batch_size"]
        for run in rec.get("runs", []):
            e2e_s, ttft = run["e2e_latency"], run["ttft"]
            assert math.isclose(run["e2e_throughput"], b * N / e2e_s)
            assert math.isclose(run["decode_throughput"], b * (N - 1) / (e2e_s - ttft))
            assert math.isclose(run["prefill_throughput"], b * 16 / ttft)


def test_stats_shape(e2e):
    for rec in cells_by_id(e2e["run_dir"]).values():
        if rec["status"] != "ok":
            continue
        assert set(rec["stats"]) == set(METRICS)
        for metric in METRICS:
            assert set(rec["stats"][metric]) == set(STAT_NAMES)
        assert rec["stats"]["e2e_latency"]["n"] == ITERS
        assert rec["stats"]["itl"]["n"] == ITERS * (N - 1)
        s = rec["stats"]["e2e_latency"]
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
        assert rec["memory"]["peak_bytes"] > 0 and rec["load_time_s"] > 0


def test_summary_jsonl(e2e):
    lines = (e2e["run_dir"] / "summary.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 6
    assert all(list(row) == summary_columns() for row in rows)  # one schema for every row
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["e2e_latency_p50"] > 0 and r["e2e_latency_n"] == ITERS for r in ok)
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert all(r["e2e_latency_p50"] is None and r["e2e_latency_n"] == 0 for r in skipped)


def test_summary_is_one_pandas_call(e2e):
    """The results directory reads as a table with one call, one column per summary field."""
    frame = pd.read_json(e2e["run_dir"] / "summary.jsonl", lines=True)
    assert list(frame.columns) == summary_columns()
    assert len(frame) == 6
    ok = frame[frame["status"] == "ok"]
    assert (ok["e2e_latency_p50"] > 0).all() and ok["e2e_latency_p50"].dtype == "float64"
    assert frame["cell_id"].is_unique


def test_logs_and_scratch(e2e):
    run_dir: Path = e2e["run_dir"]
    ok = [r for r in cells_by_id(run_dir).values() if r["status"] == "ok"]
    for rec in ok:
        assert (run_dir / rec["log"]).is_file()
    assert not (run_dir / "work").exists()  # compile caches and scratch are removed
    assert not list(run_dir.rglob("*.tmp"))


def test_profile_trace_and_top_ops(e2e):
    """Each measured cell's profiled call: a gzipped Chrome trace that parses, and its top operators."""
    run_dir: Path = e2e["run_dir"]
    ok = [r for r in cells_by_id(run_dir).values() if r["status"] == "ok"]
    for rec in ok:
        prof = rec["profile"]
        assert prof["available"] and prof["new_tokens"] == PROFILE and prof["time"] == "cpu", prof
        assert prof["trace"] == f"traces/{rec['cell_id']}.json.gz"
        with gzip.open(run_dir / prof["trace"], "rt") as f:
            assert json.load(f)["traceEvents"]
        names = [op["name"] for op in prof["top_ops"]]
        assert "aten::mm" in names and all("::" in n for n in names)
        assert abs(sum(prof["shares"].values()) - 1) < 1e-6
    # The timed runs are untouched: exactly N tokens each, ITERS of them.
    assert all(len(r["runs"]) == ITERS for r in ok)
    report = run_entrypoint_report(run_dir)
    assert "aten::mm" in report and "traces/" in report
    from bench.output.html import run_summary_html
    from bench.results.store import open_run

    html = run_summary_html(open_run(run_dir))
    assert (run_dir.resolve() / ok[0]["profile"]["trace"]).as_uri() in html


def run_entrypoint_report(run_dir: Path) -> str:
    import subprocess
    import sys

    from tests.conftest import ROOT, clean_env

    proc = subprocess.run(
        [sys.executable, str(ROOT / "entrypoint.py"), "report", str(run_dir)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stdout


def test_outputs_and_agreement(e2e):
    """Every measured cell records its output; sdpa is compared with the eager reference."""
    run_dir: Path = e2e["run_dir"]
    cells = [r for r in cells_by_id(run_dir).values() if r["status"] == "ok"]
    for rec in cells:
        out = rec["output"]
        assert out["n"] == N and len(out["tokens"]) == N and len(out["sha256"]) == 64
        assert "degenerate" not in out  # synthetic models are not judged
    rows = [json.loads(line) for line in (run_dir / "summary.jsonl").read_text().splitlines()]
    ok = [r for r in rows if r["status"] == "ok"]
    refs = {r["batch_size"]: r["cell_id"] for r in ok if r["attn_implementation"] == "eager"}
    for row in ok:
        assert row["agreement_reference"] == refs[row["batch_size"]]
        assert row["agreement_match_rate"] is not None and row["output_n"] == N
