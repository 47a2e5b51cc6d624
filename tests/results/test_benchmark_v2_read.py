"""transformers' benchmark_v2 results read as tfbench runs (bench.results.benchmark_v2_read), on the
files benchmark_v2 itself wrote (tests/fixtures/benchmark_v2), and what reads them: compare,
report, history of a directory and history of a Hub dataset (the local fake Hub)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.cli.main import main
from bench.config import benchmark_v2 as v2config
from bench.config.sources import validate
from bench.errors import UserError
from bench.output import history_command as hist
from bench.plan.matrix import Capabilities, build_plan
from bench.results import benchmark_v2 as v2writer
from bench.results import benchmark_v2_read as v2
from bench.results.records import RunMeta
from bench.results.series import local_measurements
from bench.results.store import RunDir, RunFileError
from tests.conftest import ROOT
from tests.hub_server import FakeHub, Repo, serve

FIXTURES = ROOT / "tests" / "fixtures" / "benchmark_v2"
GPU_FILE = (
    FIXTURES
    / "results"
    / "meta-llama_Llama-3.1-8B-Instruct"
    / "meta-llama_Llama-3.1-8B-Instruct_benchmark_20261202_074744.json"
)
CPU_FILE = (
    FIXTURES
    / "results"
    / "tfbench-fixtures_tiny-llama"
    / "tfbench-fixtures_tiny-llama_benchmark_20261202_074324.json"
)
HUB = FIXTURES / "hub"
CPU_RUN = "benchmark_run_20261202_074324"
SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_FAKEtestTOKEN0123456789abcdefXYZ"
REPO = "tfbench-org/benchmark-v2"


def entries(path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text())


def by_name(run: Any) -> dict[str, Any]:
    return {r.name: r for r in run.records()}


# ---------------------------------------------------------------------------------- the reader


def test_the_local_results_file_is_a_run_of_tfbench_records() -> None:
    run = v2.read_results_file(GPU_FILE)
    meta = run.meta
    assert meta.run_id == GPU_FILE.stem and meta.run_name == "benchmark_v2" and meta.status == "finished"
    assert v2.from_benchmark_v2(meta) and (meta.model_extra or {})["source_file"] == str(GPU_FILE)
    assert meta.started_at == "2026-12-02T07:47:43.234540+00:00"  # the earliest config's
    assert (
        meta.commit_sha == SHA and meta.measured_commit is not None and meta.measured_commit.branch == "main"
    )
    assert meta.hardware == "1x NVIDIA H100 80GB HBM3" and meta.device == "cuda"
    assert meta.environment is not None and meta.environment.gpus[0].memory_total_bytes == int(
        79.1846923828125 * 2**30
    )
    assert meta.packages() == {"torch": "2.13.0+cpu"} and meta.environment.python == "3.11.7"
    assert meta.config == {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "warmup_iterations": 3,
        "measurement_iterations": 5,
        "gpu_monitoring": True,
    }
    assert not run.skipped and len(meta.planned_cells()) == 3
    cells = by_name(run)
    assert sorted(cells) == [
        "eager, no compile, b1 s128 n128",
        "flash_attention_2, no compile, cb, b4 s128 n128",
        "flex_attention, compile reduce-overhead, b1 s128 n128",
    ]
    failed = cells["flex_attention, compile reduce-overhead, b1 s128 n128"]
    assert failed.status == "failed" and failed.reason == v2.FAILED_REASON and not failed.runs
    assert failed.cell.compile_fullgraph is True and failed.cell.dtype == "bfloat16"
    eager = cells["eager, no compile, b1 s128 n128"]
    assert eager.ok and len(eager.runs) == 5 and eager.process_count == 1
    assert eager.settings == {
        "warmup_iterations": 3,
        "measurement_iterations": 5,
        "processes": 1,
        "gpu_monitoring": True,
    }
    assert (eager.model_extra or {})["source"] == "benchmark_v2"


def test_cell_ids_are_those_tfbench_v2_plans_for_the_same_configs() -> None:
    for path, device in ((GPU_FILE, "cuda"), (CPU_FILE, "cpu")):
        planned = set()
        for entry in entries(path).values():
            config = entry["config"]
            combo, _, _ = v2config.parse_config(config, "test")
            shape = v2config.Shape(
                config["warmup_iterations"],
                config["measurement_iterations"],
                config["batch_size"],
                config["sequence_length"],
                config["num_tokens_to_generate"],
                config["gpu_monitoring"],
            )
            matrix = v2config.V2Matrix(combos=[combo], shapes=[shape], tp=False, notes=[])
            fields = v2config.bench_config(matrix, entry["metadata"]["model_id"])
            loaded = validate(fields, dict.fromkeys(fields, "test"), "test")
            plan = build_plan(loaded.config, Capabilities(device, flash_attn=True, kernels=True))
            planned |= {(c.cell_id, c.name) for c in plan.cells}
        run = v2.read_results_file(path)
        assert {(r.cell_id, r.name) for r in run.records()} == planned


def test_the_file_tfbench_writes_reads_back_to_the_same_cells(tmp_path: Path) -> None:
    run = v2.read_results_file(GPU_FILE)
    records = run.records()
    shapes = {
        v2config.Shape(3, 5, r.cell.batch_size, r.cell.sequence_length, r.cell.num_tokens_to_generate, True)
        for r in records
    }
    matrix = v2config.V2Matrix(
        combos=[v2config.combo_of(r.cell) for r in records],
        shapes=sorted(shapes, key=str),
        tp=False,
        notes=[],
    )
    for full in (False, True):
        data = v2writer.entries(
            matrix, records, run.meta, "meta-llama/Llama-3.1-8B-Instruct", "main", SHA, None, full
        )
        assert set(data) == set(entries(GPU_FILE))  # benchmark_v2's own config hashes
        path = tmp_path / f"{full}_benchmark_20261202_074744.json"
        v2writer.write_results_file(path, data)
        back = v2.read_results_file(path)
        assert sorted(back.cells) == sorted(run.cells)
        eager = back.cells[by_name(run)["eager, no compile, b1 s128 n128"].cell_id]
        assert eager.stat("tpot", "p50") == pytest.approx(run.cells[eager.cell_id].stat("tpot", "p50"))


def test_summarized_generate_rebuilds_tpot_from_e2e_and_ttft() -> None:
    run = v2.read_results_file(CPU_FILE)
    data = {e["config"]["name"]: e["measurements"] for e in entries(CPU_FILE).values()}
    rec = by_name(run)["eager, no compile, b2 s32 n8"]
    raw = data["w1_i3-monitored-b2_s32_n8-eager-uncompiled-unkernelized-generate"]
    assert len(rec.runs) == 3 and all(r.token_times is None and r.requests is None for r in rec.runs)
    for timed, e2e, ttft, itl in zip(
        rec.runs, raw["e2e_latency"], raw["time_to_first_token"], raw["inter_token_latency"]
    ):
        assert timed.e2e_latency == e2e and timed.ttft == ttft
        assert timed.tpot == pytest.approx((e2e - ttft) / 7)  # n - 1, not benchmark_v2's n
        assert timed.tpot != pytest.approx(itl, rel=1e-3)
        assert timed.e2e_throughput == pytest.approx(2 * 8 / e2e)
        assert timed.decode_throughput == pytest.approx(2 * 7 / (e2e - ttft))
        assert timed.prefill_throughput == pytest.approx(2 * 32 / ttft)
    assert rec.stat("tpot", "n") == 3 and rec.stat("e2e_latency", "p50") == sorted(raw["e2e_latency"])[1]


def test_summarized_continuous_batching_keeps_ttft_and_the_mean_per_request_tpot() -> None:
    run = v2.read_results_file(CPU_FILE)
    data = {e["config"]["name"]: e["measurements"] for e in entries(CPU_FILE).values()}
    rec = by_name(run)["sdpa, no compile, cb, b2 s32 n8"]
    raw = data["w1_i3-monitored-b2_s32_n8-sdpa-uncompiled-unkernelized-cb"]
    assert [r.ttft for r in rec.runs] == raw["time_to_first_token"]
    assert [r.tpot for r in rec.runs] == raw["inter_token_latency"]
    assert [r.e2e_throughput for r in rec.runs] == pytest.approx([2 * 8 / e for e in raw["e2e_latency"]])
    assert rec.stat("decode_throughput", "n") == 0 and rec.stat("prefill_throughput", "n") == 0


def test_full_rows_give_token_times_and_requests() -> None:
    full = v2.read_hub_file(HUB / "full_results" / f"{CPU_RUN}.jsonl")
    summarized = v2.read_hub_file(HUB / "summarized_results" / f"{CPU_RUN}.jsonl")
    assert full.meta.run_id == CPU_RUN and not full.skipped
    assert full.meta.hardware == "cpu: unknown" and full.meta.device == "cpu"
    rows = {
        json.loads(line)["config"]["name"]: json.loads(line)["measurements"]
        for line in (HUB / "full_results" / f"{CPU_RUN}.jsonl").read_text().splitlines()
    }
    gen = by_name(full)["eager, no compile, b1 s32 n8"]
    stamps = rows["w1_i3-monitored-b1_s32_n8-eager-uncompiled-unkernelized-generate"]["timestamps"]
    # benchmark_v2's row is n token times and then the streamer's end() call.
    assert [r.token_times for r in gen.runs] == [s[0][:8] for s in stamps]
    assert all(len(s[0]) == 9 for s in stamps)
    assert gen.stat("itl", "n") == 3 * 7  # every gap between tokens
    twin = by_name(summarized)["eager, no compile, b1 s32 n8"]
    assert [r.tpot for r in gen.runs] == pytest.approx([r.tpot for r in twin.runs])
    cb = by_name(full)["sdpa, no compile, cb, b2 s32 n8"]
    cb_stamps = rows["w1_i3-monitored-b2_s32_n8-sdpa-uncompiled-unkernelized-cb"]["timestamps"]
    for timed, iteration in zip(cb.runs, cb_stamps):
        assert timed.ttft is None and timed.requests is not None and len(timed.requests) == 2
        for req, row in zip(timed.requests, iteration):
            assert req.token_times == row and req.ttft == row[0] and req.e2e_latency == row[-1]
            assert req.tpot == pytest.approx((row[-1] - row[0]) / 7)
    assert cb.stat("ttft", "n") == 6  # per request
    # The same cells as the local file of that run.
    assert sorted(full.cells) == sorted(v2.read_results_file(CPU_FILE).cells)


def test_configs_tfbench_cannot_represent_are_left_out_and_named(tmp_path: Path) -> None:
    data = entries(CPU_FILE)
    keys = list(data)
    first = data[keys[0]]
    tp = json.loads(json.dumps(first))
    tp["config"]["tp_plan"] = "auto"
    unknown = json.loads(json.dumps(first))
    unknown["config"]["attn_implementation"] = "paged_attention"
    renamed = json.loads(json.dumps(first))
    renamed["config"]["name"] = "the-same-config-named-otherwise"
    broken = json.loads(json.dumps(data[keys[1]]))
    broken["measurements"]["time_to_first_token"] = broken["measurements"]["time_to_first_token"][:1]
    extra = {"a" * 64: tp, "b" * 64: unknown, "c" * 64: renamed}
    data[keys[1]] = broken
    path = tmp_path / "mixed_benchmark_20261202_000000.json"
    path.write_text(json.dumps({**data, **extra}))
    assert v2.is_results_file(path)
    run = v2.read_results_file(path)
    assert len(run.cells) == len(keys) - 1
    reasons = [s.reason for s in run.skipped]
    assert all(s.path == path for s in run.skipped) and len(reasons) == 4
    assert any(keys[1][:12] in r and "different numbers of iterations" in r for r in reasons)
    assert any(r.startswith("config aaaaaaaaaaaa") and "tp_plan" in r for r in reasons)
    assert any(r.startswith("config bbbbbbbbbbbb") and "paged_attention" in r for r in reasons)
    assert any("the-same-config-named-otherwise" in r and "the same cell as" in r for r in reasons)


def test_the_oldest_measures_key_is_read(tmp_path: Path) -> None:
    data = entries(CPU_FILE)
    old = {
        k: {"metadata": e["metadata"], "measures": e["measurements"], "config": e["config"]}
        for k, e in data.items()
    }
    path = tmp_path / "old_benchmark_20250101_000000.json"
    path.write_text(json.dumps(old))
    assert v2.is_results_file(path)
    assert sorted(v2.read_results_file(path).cells) == sorted(v2.read_results_file(CPU_FILE).cells)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "top level is a JSON list"),
        ("{}", "empty object"),
        ('{"abc": {}}', "not a config hash"),
        (json.dumps({"a" * 64: {"metadata": {}, "config": {}}}), "has no measurements"),
    ],
)
def test_a_file_not_of_benchmark_v2_shape_is_a_user_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(text)
    assert not v2.is_results_file(path)
    with pytest.raises(RunFileError, match=message) as info:
        v2.read_results_file(path)
    assert str(path) in str(info.value) and isinstance(info.value, UserError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no rows"),
        ("{nope", "line 1 is not JSON"),
        ('{"config": {}}', "line 1 is not a benchmark_v2 row"),
    ],
)
def test_hub_rows_not_of_benchmark_v2_shape_are_a_user_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "benchmark_run_x.jsonl"
    path.write_text(text)
    with pytest.raises(RunFileError, match=message):
        v2.read_hub_file(path)


def test_is_results_file_tells_them_apart(tmp_path: Path) -> None:
    assert v2.is_results_file(GPU_FILE) and v2.is_results_file(CPU_FILE)
    assert not v2.is_results_file(HUB / "full_results" / f"{CPU_RUN}.jsonl")
    assert not v2.is_results_file(tmp_path)  # a directory
    assert not v2.is_results_file(tmp_path / "missing.json")
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"run_id": "x", "config": {}}))
    assert not v2.is_results_file(run_json)


# ---------------------------------------------------------------------------------- compare, report


def tfbench_run(run: Any, dest: Path, processes: int = 2, tpot_factor: float = 1.0, **meta: Any) -> Path:
    """A tfbench run directory holding the cells of a converted run, as if `tfbench v2` measured
    them in `processes` processes (tpot scaled by tpot_factor)."""
    data = {k: v for k, v in run.meta.to_dict().items() if k not in ("source", "source_file", "notes")}
    data.update(run_id=dest.name, run_name="v2", **meta)
    rundir = RunDir(dest.parent, dest.name)
    rundir.create()
    rundir.write_run(RunMeta.model_validate(data))
    for rec in run.records():
        runs = [
            {**r.to_dict(), "process": i % processes, "tpot": (r.tpot or 0) * tpot_factor or None}
            for i, r in enumerate(rec.runs)
        ]
        fields = {k: v for k, v in rec.to_dict().items() if k not in ("source", "benchmark_v2")}
        rundir.write_cell(rec.model_validate({**fields, "runs": runs}))
    return dest


def test_compare_says_a_side_is_a_benchmark_v2_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", str(GPU_FILE), str(GPU_FILE), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    warnings = data["warnings"]
    assert [w.split(" ", 1)[0] for w in warnings] == ["BASE", "NEW"]
    assert all("benchmark_v2 run" in w and "one process" in w and "float32" in w for w in warnings)
    assert all("prompt" in w for w in warnings)
    # Against a tfbench run of the same configs: the cells pair up, only BASE is benchmark_v2's, and
    # what benchmark_v2 does not record (seed, CPU, transformers) raises no warning.
    new = tfbench_run(v2.read_results_file(GPU_FILE), tmp_path / "out" / "tfbench-run")
    assert main(["compare", str(GPU_FILE), str(new), "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "BASE is a benchmark_v2 run" in text and "NEW is a benchmark_v2 run" not in text
    assert "different" not in text and "not installed" not in text
    assert "2 inconclusive, 1 not compared" in text  # one process on BASE: no verdict without a calibration
    assert main(["report", str(CPU_FILE)]) == 0
    assert "sdpa" in capsys.readouterr().out


def test_compare_of_a_file_that_is_no_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": 1}')
    assert main(["compare", str(bad), str(GPU_FILE)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "benchmark_v2 results file" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------- history


def test_history_of_a_directory_reads_benchmark_v2_files_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    copy = out / CPU_FILE.parent.name / CPU_FILE.name
    copy.parent.mkdir(parents=True)
    shutil.copy(CPU_FILE, copy)
    cell = "eager, no compile, b1 s32 n8"
    found, notes = local_measurements(out, cell, lambda s: pytest.fail(str(s)))
    assert [m.run_id for m in found] == [CPU_FILE.stem] and not notes
    assert found[0].commit == SHA and found[0].source == str(copy) and found[0].record.process_count == 1
    text, code = hist.history(str(out), None, "tpot", cell, None, 0.05, None, "text")
    assert code == 0 and "1 commit, 1 run" in text
    # `tfbench v2` writes its run directory and a benchmark_v2 file of the same run: counted once.
    run = v2.read_results_file(CPU_FILE)
    tfbench_run(run, out / "v2-run", benchmark_v2_file=CPU_FILE.name)
    found, _ = local_measurements(out, cell, lambda s: pytest.fail(str(s)))
    assert [m.source for m in found] == [str(out / "v2-run")]
    # Another run's file is a run of its own.
    tfbench_run(run, out / "other-run", benchmark_v2_file="someone_else_benchmark_20260101_000000.json")
    found, _ = local_measurements(out, cell, lambda s: pytest.fail(str(s)))
    assert sorted(m.source for m in found) == [str(out / "other-run"), str(out / "v2-run")]


def test_history_of_a_directory_without_runs_says_what_it_looks_for(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run directories .* and no benchmark_v2 results files"):
        local_measurements(tmp_path, "abcd", lambda s: None)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    yield from serve(monkeypatch, TOKEN)


def test_history_of_a_hub_dataset_benchmark_v2_pushed_to(fake_hub: FakeHub, tmp_path: Path) -> None:
    files = {str(p.relative_to(HUB)): p.read_bytes() for p in HUB.glob("*/*.jsonl")}
    # A later run of the same configs at another commit, as benchmark_v2 pushes it.
    later = "benchmark_run_20261203_080000.jsonl"
    for folder in ("full_results", "summarized_results"):
        text = (HUB / folder / f"{CPU_RUN}.jsonl").read_text()
        files[f"{folder}/{later}"] = (
            text.replace(SHA, "f" * 40).replace("2026-12-02T", "2026-12-03T").encode()
        )
    fake_hub.repos[REPO] = Repo(REPO, "dataset", False, files=files, commits=[{"oid": "a" * 40}])
    cell = "eager, no compile, b1 s32 n8"
    raw = hist.load_hub(REPO, "tpot", cell, endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    assert [p.commit for p in raw] == [SHA, "f" * 40]
    assert [p.run_id for p in raw] == [CPU_RUN, Path(later).stem]
    assert raw[0].source == f"hub:{REPO}/full_results/{CPU_RUN}.jsonl" and len(raw[0].samples) == 3
    summ = hist.load_hub(REPO, "tpot", cell, endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c", raw=False)
    assert summ[0].source == f"hub:{REPO}/summarized_results/{CPU_RUN}.jsonl"
    assert [p.p50 for p in summ] == pytest.approx([p.p50 for p in raw])
    text, code = hist.history(
        None,
        REPO,
        "tpot",
        cell,
        None,
        0.05,
        None,
        "text",
        endpoint=fake_hub.endpoint,
        cache_dir=tmp_path / "c",
    )
    assert code == 0 and "2 commits, 2 runs" in text
    with pytest.raises(UserError, match=f"no cell 'zzzz' in the Hub dataset {REPO}"):
        hist.load_hub(REPO, "tpot", "zzzz", endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
