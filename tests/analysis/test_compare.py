"""`bench.compare` on run directories written on the spot: synthetic raw samples from a seeded RNG,
records built the way the worker builds them (bench.stats), no model run."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from bench.analysis import compare as cmpmod
from bench.analysis.compare import (
    IMPROVEMENT,
    INCONCLUSIVE,
    NOT_TESTED,
    REGRESSION,
    UNCHANGED,
    compare_runs,
    exit_code,
)
from bench.analysis.noise import Drift
from bench.errors import UserError
from bench.output.compare import to_json, to_markdown, to_table
from bench.plan.matrix import cell_name
from bench.results.stats import run_metrics, summarize, summarize_runs
from bench.results.store import open_run as load_run
from benchmarks.ranktest import exact_cdf, rank_test

SEQ = 128
NEW_TOKENS = 32
ENV = {
    "python": "3.11.7",
    "hostname": "bench-1",
    "cpu": "AMD EPYC 7R13",
    "cpu_count": 16,
    "packages": {"torch": "2.13.0", "transformers": "5.24.0", "tfbench": "0.1.0"},
    "cuda_available": True,
    "driver_version": "570.1",
    "cuda_driver_version": "12.8",
    "gpus": [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85 * 2**30, "uuid": "GPU-1"}
    ],
}
CONFIG = {"warmup_iterations": 2, "measurement_iterations": 20, "seed": 0, "gpu_monitoring": True}


def cell_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def cell_axes(
    index: int,
    attn: str = "sdpa",
    batch: int = 1,
    cb: bool = False,
    compile_mode: str | None = None,
    seq: int = SEQ,
) -> dict[str, Any]:
    """A cell as bench.matrix writes it into a record, for a small model on one GPU."""
    name = cell_name(attn, compile_mode, False, cb, batch, seq, NEW_TOKENS)
    return {
        "index": index,
        "cell_id": cell_id(name),
        "name": name,
        "model": "synthetic:llama-small",
        "dtype": "bfloat16",
        "device": "cuda",
        "attn_implementation": attn,
        "compile": compile_mode,
        "kernelize": False,
        "continuous_batching": cb,
        "batch_size": batch,
        "sequence_length": seq,
        "num_tokens_to_generate": NEW_TOKENS,
        "skip_reason": None,
    }


def record(
    axes: dict[str, Any],
    rng: np.random.Generator,
    *,
    n: int = 20,
    noise: float = 0.02,
    ttft: float = 0.040,
    tpot: float = 0.012,
    ttft_factor: float = 1.0,
    tpot_factor: float = 1.0,
    peak_bytes: int = 3 * 2**30,
    status: str = "ok",
    reason: str | None = None,
    processes: int = 4,
    between: float = 0.01,
) -> dict[str, Any]:
    """A cell record as the runner writes it: raw runs from `processes` workers, stats, memory.

    Each process has its own log-normal offset (sd `between`), each run independent log-normal
    noise (sd `noise`) on its ttft and tpot; e2e, the per-token times and the throughputs follow
    from them exactly as bench.stats defines them. Run i belongs to process i * processes // n.
    """
    rec: dict[str, Any] = {
        "schema_version": 1,
        "cell_id": axes["cell_id"],
        "status": status,
        "reason": reason,
        "cell": axes,
        "settings": {"warmup_iterations": 2, "measurement_iterations": n, "seed": 0},
    }
    if status != "ok":
        return rec
    batch = axes["batch_size"]
    runs = []
    offsets = [math.exp(rng.normal(0, between)) for _ in range(processes)]
    for i in range(n):
        process = i * processes // n
        ttft_factor_run, tpot_factor_run = ttft_factor * offsets[process], tpot_factor * offsets[process]
        if axes["continuous_batching"]:
            requests = []
            for _ in range(batch):
                t0 = ttft * ttft_factor_run * math.exp(rng.normal(0, noise))
                t1 = tpot * tpot_factor_run * math.exp(rng.normal(0, noise))
                times = [t0 + k * t1 for k in range(NEW_TOKENS)]
                requests.append({"e2e_latency": times[-1], "ttft": t0, "tpot": t1, "token_times": times})
            e2e = max(r["e2e_latency"] for r in requests) * 1.01
            runs.append(
                {
                    "e2e_latency": e2e,
                    "e2e_throughput": batch * NEW_TOKENS / e2e,
                    "requests": requests,
                    "process": process,
                }
            )
            continue
        first = ttft * ttft_factor_run * math.exp(rng.normal(0, noise))
        step = tpot * tpot_factor_run * math.exp(rng.normal(0, noise))
        times = [first + k * step for k in range(NEW_TOKENS)]
        e2e = times[-1]
        run = run_metrics(e2e, times, batch, SEQ)
        run["token_times"] = times
        run["process"] = process
        runs.append(run)
    rec["runs"] = runs
    if axes["continuous_batching"]:
        reqs = [r for run in runs for r in run["requests"]]
        rec["stats"] = {
            "e2e_latency": summarize([r["e2e_latency"] for r in runs]),
            "ttft": summarize([r["ttft"] for r in reqs]),
            "tpot": summarize([r["tpot"] for r in reqs]),
            "e2e_throughput": summarize([r["e2e_throughput"] for r in runs]),
            "decode_throughput": summarize([]),
            "prefill_throughput": summarize([]),
        }
    else:
        rec["stats"] = summarize_runs(runs)
    rec["memory"] = {"peak_bytes": peak_bytes, "peak_reserved_bytes": peak_bytes + 2**28}
    return rec


def write_run(
    path: Path,
    records: list[dict[str, Any]],
    *,
    environment: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    sha: str = "a" * 40,
    status: str = "finished",
    ab: str | None = "pair-1",
) -> Path:
    env = environment or ENV
    cfg = {**CONFIG, **(config or {})}
    meta = {
        "run_id": path.name,
        "schema_version": 1,
        "tfbench_version": "0.1.0",
        "status": status,
        "config": cfg,
        "identity": {
            "cells": "0" * 16,
            "settings": {k: cfg[k] for k in ("warmup_iterations", "measurement_iterations", "seed")},
            "hardware": "cuda: " + ", ".join(g["name"] for g in env["gpus"]),
            "shard": None,
        },
        "environment": env,
        "measured_commit": {"sha": sha, "source": "git"},
        "shard": None,
    }
    if ab is not None:  # the two sides of one `tfbench ab`: measured interleaved, no drift between them
        meta["ab"] = {"id": ab}
    (path / "cells").mkdir(parents=True)
    (path / "run.json").write_text(json.dumps(meta))
    for rec in records:
        (path / "cells" / f"{rec['cell_id']}.json").write_text(json.dumps(rec))
    return path


CELLS = [cell_axes(0, "eager"), cell_axes(1, "sdpa"), cell_axes(2, "sdpa", batch=4)]


def make_run(
    path: Path,
    seed: int,
    changes: dict[int, dict[str, Any]] | None = None,
    ab: str | None = "pair-1",
    **kwargs: Any,
) -> Path:
    """A run of CELLS; `changes` maps a cell index to record() keyword arguments for that cell."""
    rng = np.random.default_rng(seed)
    recs = [record(axes, rng, **{**kwargs, **(changes or {}).get(axes["index"], {})}) for axes in CELLS]
    return write_run(path, recs, ab=ab)


def by_name(cmp: cmpmod.Comparison) -> dict[str, cmpmod.CellComparison]:
    return {c.name: c for c in cmp.cells}


@pytest.fixture
def regression(tmp_path):
    """Cell 1's tpot 10% slower in NEW, 2% noise, 20 runs a side, seeds differ."""
    base = make_run(tmp_path / "base", seed=1)
    new = make_run(tmp_path / "new", seed=2, changes={1: {"tpot_factor": 1.10}})
    return compare_runs(load_run(base), load_run(new))


def test_ten_percent_slowdown_is_a_regression(regression):
    cmp = regression
    slow = CELLS[1]["name"]
    cells = by_name(cmp)
    assert cells[slow].verdict == REGRESSION
    assert cmp.cells[0].name == slow  # regressions come first
    for metric in ("tpot", "e2e_latency"):
        m = cells[slow].metrics[metric]
        assert m.verdict == REGRESSION, m
        assert m.significant and m.beyond_threshold
        assert m.ci_low > 1 and m.ci_high > m.ci_low
        assert m.ci_low <= m.ratio <= m.ci_high
        assert m.p_value < 1e-3 and m.processes_base == m.processes_new == 4
        assert m.runs_base == m.runs_new == 20 and m.mde < 0.05
    assert 1.08 < cells[slow].metrics["tpot"].ratio < 1.12
    assert 1.07 < cells[slow].metrics["e2e_latency"].ratio < 1.11  # ttft is a small part of e2e
    # Throughputs fall with it: lower is worse for them.
    assert cells[slow].metrics["decode_throughput"].verdict == REGRESSION
    assert cells[slow].metrics["decode_throughput"].ratio < 1 / 1.05
    # ttft and prefill did not change; neither did the other cells.
    assert cells[slow].metrics["ttft"].verdict == UNCHANGED
    assert cells[slow].metrics["prefill_throughput"].verdict == UNCHANGED
    assert {c.verdict for c in cmp.cells if c.name != slow} == {UNCHANGED}
    assert cmp.counts()[REGRESSION] == 1 and cmp.counts()[UNCHANGED] == 2
    assert exit_code(cmp) == 1
    assert not cmp.warnings


def test_identical_runs_find_nothing(tmp_path):
    base = load_run(make_run(tmp_path / "base", seed=7))
    cmp = compare_runs(base, base)
    assert [c.verdict for c in cmp.cells] == [UNCHANGED] * 3
    for c in cmp.cells:
        for m in c.metrics.values():
            assert m.ratio == 1.0 and not m.significant
            if m.verdict != NOT_TESTED:
                assert m.p_value == 1.0 and m.ci_low <= 1 <= m.ci_high
    assert exit_code(cmp) == 0 and exit_code(cmp, strict=True) == 0
    assert not cmp.warnings and not cmp.notes
    assert not (cmp.only_base or cmp.only_new or cmp.not_compared)


def test_noise_alone_raises_no_false_alarms(tmp_path):
    """Same distribution, different seeds, 20 seed pairs of 3 cells, processes varying 1-3%: no
    regression or improvement at 2% run noise, at most 5% of the cells at 5% (the method's own rate
    is measured in tests/analysis/test_noise.py). Where the data cannot resolve 5%, the verdict says so
    (inconclusive) rather than unchanged."""
    for noise, between, allowed in ((0.02, 0.01, 0), (0.05, 0.03, 3)):
        alarms = cells = unsure = 0
        for seed in range(20):
            kw = {"noise": noise, "between": between}
            base = load_run(make_run(tmp_path / f"b{noise}-{seed}", seed=1000 + seed, **kw))
            new = load_run(make_run(tmp_path / f"n{noise}-{seed}", seed=2000 + seed, **kw))
            cmp = compare_runs(base, new)
            cells += len(cmp.cells)
            alarms += sum(c.verdict in (REGRESSION, IMPROVEMENT) for c in cmp.cells)
            unsure += sum(c.verdict == INCONCLUSIVE for c in cmp.cells)
            if allowed == 0:
                assert exit_code(cmp) == 0 and not cmp.warnings, to_markdown(cmp)
        assert cells == 60
        assert alarms <= allowed, (noise, alarms)
        if allowed == 0:
            assert unsure <= 15, unsure  # 2% noise: the data resolves 5% for most cells


@pytest.mark.parametrize("runs", [10, 20])
@pytest.mark.parametrize("outliers", [False, True])
def test_rank_test_false_alarm_rate_is_at_most_alpha(runs, outliers):
    """4,000 pairs of samples of one distribution: p < 0.05 at most 5% of the time (within 3 sigma
    of the count, 1 point), log-normal or with 10% of the runs 1.5x slower (a rank test does not care)."""
    rng = np.random.default_rng(42)
    trials = 4000
    alarms = 0
    for _ in range(trials):
        values = np.exp(rng.normal(0, 0.05, (2, runs)))
        if outliers:
            values *= np.where(rng.random((2, runs)) < 0.1, 1.5, 1.0)
        alarms += rank_test(list(values[0]), list(values[1])).p_value < 0.05
    assert alarms / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_significant_change_below_threshold_is_unchanged(tmp_path):
    base = load_run(make_run(tmp_path / "base", seed=3, noise=0.005, between=0.002))
    new = load_run(
        make_run(tmp_path / "new", seed=4, noise=0.005, between=0.002, changes={0: {"tpot_factor": 1.02}})
    )
    cmp = compare_runs(base, new)
    cell = by_name(cmp)[CELLS[0]["name"]]
    tpot = cell.metrics["tpot"]
    assert 1.01 < tpot.ratio < 1.03
    assert tpot.significant and tpot.p_value < 0.01 and tpot.ci_low > 1
    assert not tpot.beyond_threshold and tpot.verdict == UNCHANGED
    assert "within the 5% threshold" in tpot.note
    assert cell.verdict == UNCHANGED and exit_code(cmp) == 0

    # Per-metric thresholds: 1% on tpot makes it a regression; e2e keeps the default 5%.
    strict = compare_runs(base, new, thresholds={"tpot": 0.01})
    cell = by_name(strict)[CELLS[0]["name"]]
    assert cell.metrics["tpot"].verdict == REGRESSION and cell.metrics["tpot"].threshold == 0.01
    assert cell.metrics["e2e_latency"].verdict == UNCHANGED and cell.metrics["e2e_latency"].significant
    assert cell.verdict == REGRESSION and exit_code(strict) == 1
    assert strict.thresholds["tpot"] == 0.01 and strict.thresholds["ttft"] == 0.05


def test_faster_is_an_improvement(tmp_path):
    base = load_run(make_run(tmp_path / "base", seed=5))
    new = load_run(make_run(tmp_path / "new", seed=6, changes={2: {"tpot_factor": 0.88}}))
    cmp = compare_runs(base, new)
    cell = by_name(cmp)[CELLS[2]["name"]]
    assert cell.verdict == IMPROVEMENT
    for metric in ("decode_throughput", "e2e_throughput"):
        m = cell.metrics[metric]
        assert m.ratio > 1.05 and m.ci_low > 1 and m.verdict == IMPROVEMENT, m
    assert cell.metrics["tpot"].verdict == IMPROVEMENT and cell.metrics["tpot"].ci_high < 1
    assert cmp.counts()[IMPROVEMENT] == 1 and cmp.counts()[REGRESSION] == 0
    assert exit_code(cmp) == 0
    # The same change read the other way round is a regression, throughputs included.
    back = compare_runs(new, base)
    assert by_name(back)[CELLS[2]["name"]].metrics["decode_throughput"].verdict == REGRESSION


def test_cells_in_one_run_and_not_ok_are_listed(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c, d, e = (cell_axes(i, attn, batch) for i, attn, batch in [
        (0, "eager", 1), (1, "sdpa", 1), (2, "sdpa", 4), (3, "eager", 4), (4, "flex_attention", 1)
    ])  # fmt: skip
    base = write_run(
        tmp_path / "base",
        [
            record(a, rng),
            record(b, rng),
            record(c, rng, status="skipped", reason="needs flash-attn"),
            record(d, rng),
            record(e, rng, status="failed", reason="boom"),
        ],
    )
    new = write_run(
        tmp_path / "new",
        [
            record(a, rng),
            record(b, rng, status="oom", reason="CUDA out of memory"),
            record(c, rng),
            record(e, rng),
            record(cell_axes(5, "sdpa", 8), rng),
        ],
    )
    cmp = compare_runs(load_run(base), load_run(new))
    assert [c.name for c in cmp.cells] == [a["name"]]
    assert [(s.name, s.base_status, s.new_status) for s in cmp.only_base] == [(d["name"], "ok", None)]
    assert [(s.name, s.base_status, s.new_status) for s in cmp.only_new] == [
        (cell_axes(5, "sdpa", 8)["name"], None, "ok")
    ]
    statuses = {s.name: (s.base_status, s.new_status) for s in cmp.not_compared}
    assert statuses == {b["name"]: ("ok", "oom"), c["name"]: ("skipped", "ok"), e["name"]: ("failed", "ok")}
    assert [s.name for s in cmp.lost] == [b["name"]]
    assert exit_code(cmp) == 0 and exit_code(cmp, strict=True) == 1
    counts = cmp.counts()
    assert (counts["only in base"], counts["only in new"], counts["not compared"]) == (1, 1, 3)

    md = to_markdown(cmp)
    assert "5 not compared" in md.splitlines()[0]
    section = md.split("#### Cells not compared")[1]
    assert f"| `{b['name']}` | ok | oom | CUDA out of memory |" in section
    assert f"| `{d['name']}` | ok | absent |" in section
    assert f"| `{e['name']}` | failed | ok | boom |" in section
    data = to_json(cmp)
    assert data["not_compared"][0]["new_status"] == "oom"
    assert data["only_base"][0]["cell_id"] == d["cell_id"]


def test_markdown_and_json_carry_the_verdicts(regression):
    md = to_markdown(regression)
    lines = md.splitlines()
    assert lines[0] == "### tfbench compare: 1 regression, 0 improvements, 2 unchanged"
    slow = CELLS[1]["name"]
    head = md.index(f"**`{slow}`**")
    detail = md[head : md.index("\n\n", md.index("| metric |", head))]
    row = next(line for line in detail.splitlines() if line.startswith("| tpot |"))
    tpot = by_name(regression)[slow].metrics["tpot"]
    # The metric's verdict, BASE and NEW with units, the ratio and interval, p, MDE and n per side.
    assert "▲ regression" in row and " ms |" in row
    assert f"| ▲ {tpot.ratio:.3f} [{tpot.ci_low:.3f}, {tpot.ci_high:.3f}] |" in row
    assert f"| {tpot.mde:.1%} |" in row and "| 4x20 / 4x20 |" in row
    # The regression's table precedes the unchanged cells, which fold away.
    assert md.index(slow) < md.index("<details><summary>2 unchanged</summary>")
    assert "Welch" in to_json(regression)["method"] and "Run-to-run drift: none" in md

    data = to_json(regression)
    text = json.dumps(data, allow_nan=False)  # serializable, no NaN
    assert json.loads(text)["summary"]["counts"][REGRESSION] == 1
    assert data["summary"]["exit_code"] == 1
    assert data["summary"]["headline"] == "1 regression, 0 improvements, 2 unchanged"
    cell = data["cells"][0]
    assert cell["verdict"] == REGRESSION and cell["metrics"]["tpot"]["verdict"] == REGRESSION
    assert cell["metrics"]["tpot"]["ci_low"] > 1
    assert cell["metrics"][cmpmod.MEMORY_METRIC]["verdict"] == NOT_TESTED
    assert data["base"]["run_id"] == "base" and data["alpha"] == 0.05

    console = Console(record=True, width=250)
    console.print(to_table(regression))
    text = console.export_text()
    assert "regression" in text and "unchanged" in text and "1 regression" in text


def test_memory_is_a_ratio_without_a_test(tmp_path):
    base = load_run(make_run(tmp_path / "base", seed=1))
    new = load_run(make_run(tmp_path / "new", seed=2, changes={0: {"peak_bytes": int(3.6 * 2**30)}}))
    cmp = compare_runs(base, new)
    cell = by_name(cmp)[CELLS[0]["name"]]
    mem = cell.metrics[cmpmod.MEMORY_METRIC]
    assert mem.verdict == NOT_TESTED and mem.p_value is None and mem.ci_low is None
    assert mem.ratio == pytest.approx(1.2) and mem.beyond_threshold
    assert "no test" in mem.note
    assert cell.verdict == UNCHANGED and exit_code(cmp) == 0
    assert "! 1.200" in to_markdown(cmp)


def test_one_process_a_side_is_inconclusive_without_a_calibration(tmp_path):
    """Runs of one process per cell (every run before processes existed) cannot tell process noise
    from a change: their verdict says so instead of trusting the runs of one process."""
    base = load_run(make_run(tmp_path / "base", seed=1, processes=1))
    new = load_run(make_run(tmp_path / "new", seed=2, processes=1, tpot_factor=1.5))
    cmp = compare_runs(base, new)
    for cell in cmp.cells:
        assert cell.verdict == INCONCLUSIVE
        tpot = cell.metrics["tpot"]
        assert tpot.ratio > 1.4 and tpot.p_value is None and "one process" in tpot.note
    assert exit_code(cmp) == 0 and cmp.counts()[INCONCLUSIVE] == 3
    # A calibration of the hardware says how processes vary: then the same runs can be judged.
    calibrated = Drift(0.0, 0.0, 30.0, "test calibration", process_var=0.02**2, process_df=60.0)
    judged = compare_runs(base, new, drift=calibrated)
    assert {c.verdict for c in judged.cells} == {REGRESSION}


def test_runs_made_apart_carry_an_assumed_drift_and_say_so(tmp_path):
    base = load_run(make_run(tmp_path / "base", seed=1, ab=None))
    same = compare_runs(base, base)
    assert same.drift.startswith("assumed 5% between runs: no calibration for 1x NVIDIA H100 80GB HBM3")
    # Identical numbers, but two runs apart could differ by the machine's drift: not "unchanged".
    assert {c.verdict for c in same.cells} == {INCONCLUSIVE}
    tpot = same.cells[0].metrics["tpot"]
    assert tpot.ratio == 1.0 and tpot.mde > 0.10 and "minimum detectable" in tpot.note
    big = load_run(make_run(tmp_path / "new", seed=2, ab=None, changes={0: {"tpot_factor": 1.5}}))
    cmp = compare_runs(base, big)
    assert by_name(cmp)[CELLS[0]["name"]].verdict == REGRESSION  # 50% is beyond any drift


def test_continuous_batching_uses_per_run_medians(tmp_path):
    axes = cell_axes(0, "sdpa", batch=8, cb=True)
    base = write_run(tmp_path / "base", [record(axes, np.random.default_rng(1), n=10)])
    new = write_run(tmp_path / "new", [record(axes, np.random.default_rng(2), n=10, ttft_factor=1.2)])
    cmp = compare_runs(load_run(base), load_run(new))
    cell = cmp.cells[0]
    assert set(cell.metrics) == {"e2e_latency", "ttft", "tpot", "e2e_throughput", cmpmod.MEMORY_METRIC}
    ttft = cell.metrics["ttft"]
    assert ttft.runs_base == ttft.runs_new == 10  # runs, not 80 requests
    assert ttft.verdict == REGRESSION and 1.15 < ttft.ratio < 1.25
    assert cell.metrics["tpot"].verdict == UNCHANGED
    rec = load_run(base).cells[axes["cell_id"]]
    raw = rec.to_dict()["runs"]
    expected = [float(np.median([r["ttft"] for r in run["requests"]])) for run in raw]
    assert rec.samples("ttft") == pytest.approx(expected)


def test_hardware_and_settings_differences_warn(tmp_path):
    rng = np.random.default_rng(0)
    base = write_run(tmp_path / "base", [record(CELLS[0], rng)])
    other_env = copy.deepcopy(ENV)
    other_env["gpus"][0]["name"] = "NVIDIA H200"
    other_env["gpus"][0]["memory_total_bytes"] = 141 * 2**30
    other_env["packages"]["transformers"] = "5.25.0"
    new = write_run(
        tmp_path / "new",
        [record(CELLS[0], rng)],
        environment=other_env,
        config={"measurement_iterations": 30},
        sha="b" * 40,
        status="interrupted",
    )
    cmp = compare_runs(load_run(base), load_run(new))
    text = "\n".join(cmp.warnings)
    assert (
        "different hardware: GPUs NVIDIA H100 80GB HBM3 (85 GiB) (BASE) vs NVIDIA H200 (141 GiB) (NEW)"
        in text
    )
    assert "measurement_iterations 20 (BASE) vs 30 (NEW)" in text
    assert "NEW run is interrupted" in text
    assert "transformers 5.24.0 -> 5.25.0" in cmp.notes
    assert f"measured commit {'a' * 12} -> {'b' * 12}" in cmp.notes
    assert len(cmp.cells) == 1  # a warning, not an error
    md = to_markdown(cmp)
    assert "> ⚠️ different hardware" in md and "transformers 5.25.0" in md


def test_not_a_run_directory_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=str(missing)):
        load_run(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"{empty} is not a tfbench run directory"):
        load_run(empty)
    file = tmp_path / "file.json"
    file.write_text("{}")
    with pytest.raises(UserError, match="file"):
        load_run(file)
    # The results directory itself: point at a run inside it.
    make_run(tmp_path / "results" / "run-1", seed=0)
    with pytest.raises(UserError, match=r"holds run directories \(run-1\)"):
        load_run(tmp_path / "results")
    sharded = tmp_path / "sharded"
    (sharded / "shards" / "0-of-2").mkdir(parents=True)
    with pytest.raises(UserError, match="tfbench merge"):
        load_run(sharded)
    # A file in cells/ that is not a record is named and skipped, not taken for a cell.
    broken = make_run(tmp_path / "broken", seed=0)
    (broken / "cells" / "zzz.json").write_text("{not json")
    run = load_run(broken)
    assert [s.path.name for s in run.skipped] == ["zzz.json"] and "zzz" not in run.cells


def test_bad_thresholds_and_alpha(tmp_path):
    run = load_run(make_run(tmp_path / "r", seed=0, n=5))
    with pytest.raises(UserError, match="unknown metric 'latency'"):
        compare_runs(run, run, thresholds={"latency": 0.1})
    with pytest.raises(UserError, match="fraction"):
        compare_runs(run, run, thresholds={"tpot": -0.1})
    with pytest.raises(UserError, match="alpha"):
        compare_runs(run, run, alpha=5)


def test_rank_test_matches_reference_values():
    # Two-sided p-values from scipy.stats.mannwhitneyu 1.17.1 (method "exact" without ties,
    # "asymptotic" with continuity correction when there are ties).
    base = [1.00, 1.03, 0.98, 1.05, 0.97, 1.01, 1.04, 0.99]
    new = [1.06, 1.09, 1.045, 1.10, 1.08, 1.02, 1.07, 1.11]
    r = rank_test(base, new)
    assert r.exact and r.u == 60 and r.p_value == pytest.approx(0.0018648018648018648, rel=1e-12)
    tied_base = [1.0, 1.0, 1.1, 1.2, 0.9, 1.0, 1.3, 1.1, 1.0, 0.95]
    tied_new = [1.1, 1.2, 1.2, 1.3, 1.0, 1.1, 1.4, 1.2, 1.1, 1.0]
    r = rank_test(tied_base, tied_new)
    assert not r.exact and r.p_value == pytest.approx(0.06842141225124462, rel=1e-9)
    # Critical values of U from the published tables (two-sided 0.05): 23 for 10/10, 127 for 20/20.
    for size, critical in ((10, 23), (20, 127)):
        cdf = exact_cdf(size, size)
        assert cdf[critical] < 0.025 <= cdf[critical + 1]
    # The interval inverts the test: it excludes 1 exactly when p < alpha.
    rng = np.random.default_rng(0)
    for _ in range(200):
        m, n = rng.integers(4, 25, size=2)
        r = rank_test(list(np.exp(rng.normal(0, 0.05, m))), list(np.exp(rng.normal(0.03, 0.05, n))))
        assert (r.ci_low > 1 or r.ci_high < 1) == (r.p_value < 0.05)


def test_changed_output_is_flagged_beside_an_unchanged_verdict(tmp_path):
    """Other tokens in NEW: a marker and a note, the speed verdict and the exit code as they were."""
    rng = np.random.default_rng(3)
    axes = [cell_axes(0), cell_axes(1, attn="eager"), cell_axes(2, attn="eager", batch=2)]
    base_recs = [record(a, rng) for a in axes]
    for rec, ids in zip(base_recs, ([1, 2, 3], [1, 2, 3], [4, 5])):
        rec["output"] = {"tokens": ids, "n": len(ids), "sha256": hashlib.sha256(bytes(ids)).hexdigest()}
    new_recs = copy.deepcopy(base_recs)
    new_recs[0]["output"] = {"tokens": [1, 2, 9], "n": 3, "sha256": "f" * 64}
    del new_recs[2]["output"]  # an earlier version's record: nothing to say
    base = write_run(tmp_path / "base", base_recs)
    new = write_run(tmp_path / "new", new_recs)
    cmp = compare_runs(load_run(base), load_run(new))
    changed = {c.cell_id: c.output_changed for c in cmp.cells}
    assert changed == {axes[0]["cell_id"]: True, axes[1]["cell_id"]: False, axes[2]["cell_id"]: None}
    assert [c.verdict for c in cmp.cells] == [UNCHANGED] * 3 and exit_code(cmp) == 0
    assert any("1 cell(s) generated other tokens" in n for n in cmp.notes)
    md = to_markdown(cmp)
    assert md.count("≠ output") >= 2  # the cell's row and the note
    console = Console(record=True, width=200)
    console.print(to_table(cmp))
    assert "≠ output" in console.export_text()
    assert [c["output_changed"] for c in to_json(cmp)["cells"]] == [changed[c.cell_id] for c in cmp.cells]
