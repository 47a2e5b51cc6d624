"""Pushing results to a Hub dataset: the files and the card, one commit, retries, failures, secrets.

The Hub is tests/hub_server.py (a local fake speaking the endpoints huggingface_hub 2.4.0 calls);
run directories are written here the way the runner writes them (records shaped like a real run's,
summary.jsonl by bench.store), so no model runs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import close_session

from bench import SCHEMA_VERSION, __version__
from bench.errors import EXIT_USAGE, UserError
from bench.hub import push as hub
from bench.hub.card import render_card, split_card
from bench.hub.schema import CONTEXT_COLUMNS, RUN_SCALARS, summarized_columns
from bench.results.records import CellRecord, RunMeta
from bench.results.stats import METRICS, summarize, summarize_runs
from bench.results.store import RunDir
from bench.results.summary import summary_columns
from tests.hub_server import FakeHub, serve

TOKEN = "hf_FAKEtestTOKEN0123456789abcdefXYZ"
SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "tfbench-org/results"
EXPECTED_ENDPOINTS = {"create_repo", "resolve", "validate_yaml", "preupload", "commit"}


# ---------------------------------------------------------------------------------------------
# Run directories shaped like the runner's


def _cell(index: int, device: str, attn: str, batch: int, **over: Any) -> dict[str, Any]:
    cell = {
        "index": index,
        "cell_id": f"{index:04d}{device}{attn}{batch}"[:16].ljust(16, "0"),
        "name": f"{attn}/eager-mode b{batch} s16 n4",
        "model": "synthetic:llama-tiny",
        "revision": None,
        "model_config": {},
        "dtype": "float32" if device == "cpu" else "bfloat16",
        "device": device,
        "attn_implementation": attn,
        "compile": None,
        "compile_fullgraph": False,
        "compile_dynamic": None,
        "kernelize": False,
        "continuous_batching": False,
        "batch_size": batch,
        "sequence_length": 16,
        "num_tokens_to_generate": 4,
        "skip_reason": None,
    }
    cell.update(over)
    return cell


def _runs(n: int, base: float, batch: int, gpu: bool) -> list[dict[str, Any]]:
    runs = []
    for i in range(n):
        times = [base * (k + 1) + i * 1e-4 for k in range(4)]
        e2e = times[-1] + 1e-3
        run = {
            "e2e_latency": e2e,
            "ttft": times[0],
            "tpot": (e2e - times[0]) / 3,
            "e2e_throughput": batch * 4 / e2e,
            "decode_throughput": batch * 3 / (e2e - times[0]),
            "prefill_throughput": batch * 16 / times[0],
            "token_times": times,
        }
        if gpu:
            run.update(
                e2e_latency_device=e2e * 0.99, energy_j=1.5 + i, energy_per_token_j=(1.5 + i) / (4 * batch)
            )
        runs.append(run)
    return runs


def _record(run_id: str, cell: dict[str, Any], status: str = "ok", gpu: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "cell_id": cell["cell_id"],
        "status": status,
        "reason": None,
        "error": None,
        "cell": cell,
        "settings": {
            "warmup_iterations": 1,
            "measurement_iterations": 3,
            "seed": 0,
            "gpu_monitoring": True,
            "cell_timeout_s": 120.0,
        },
        "gpu_telemetry": {"available": False, "reason": "the cell runs on the CPU (no GPU to sample)"},
        "worker_pid": 4242 + cell["index"],
        "log": f"logs/{cell['cell_id']}.log",
        "started_at": "2026-11-29T02:33:29.761+00:00",
        "finished_at": "2026-11-29T02:33:38.748+00:00",
        "duration_s": 8.98,
        "attempt": 1,
        "attempts": [],
    }
    if status == "skipped":
        record.update(reason=cell["skip_reason"], attempt=0, worker_pid=None, log=None)
        return record
    if status == "failed":
        record.update(
            reason="RuntimeError: boom",
            error={"kind": "exception", "type": "RuntimeError", "message": "boom", "log_tail": "Traceback"},
        )
        return record
    runs = _runs(3, 0.01 * cell["batch_size"], cell["batch_size"], gpu)
    stats = summarize_runs(
        [{**r, "itl": [b - a for a, b in zip(r["token_times"], r["token_times"][1:])]} for r in runs]
    )
    record.update(
        isolation={"spawn_s": 0.11, "exit_s": 0.02, "overhead_s": 0.13},
        load_time_s=0.17,
        parameters=7096576,
        effective_attn_implementation=cell["attn_implementation"],
        runs=runs,
        stats=stats,
        warmup_time_s=1.3,
        inputs={"shape": [cell["batch_size"], 16], "new_tokens": 4},
        compiled_graphs=0,
        memory={"peak_rss_bytes": 347987968, "peak_bytes": 347987968, "kv_cache_bytes": 655360},
        worker_environment={"torch": "2.13.0+cpu", "torch_cuda": None, "torch_threads": 2},
        warmup_check={"first_over_median": 0.83, "suspect": False},
        roofline={"gpu": None, "decode_mbu": None, "prefill_mfu": None, "kv_cache_bytes": 655360},
    )
    if gpu:
        energy = [r["energy_j"] for r in runs]
        record["gpu_telemetry"] = {
            "available": True,
            "devices": [
                {"index": 0, "metrics": {"gpu_util_pct": {"mean": 97.5}, "power_w": {"mean": 612.0}}}
            ],
            "energy_per_run_j": summarize(energy),
            "energy_per_token_j": summarize([r["energy_per_token_j"] for r in runs]),
        }
        record["memory"] = {"peak_bytes": 2_000_000_000, "nvml_used_peak_bytes": 3_000_000_000}
        record["roofline"] = {
            "gpu": "H200",
            "decode_mbu": 0.41,
            "prefill_mfu": 0.12,
            "kv_cache_bytes": 1 << 20,
        }
        record["worker_environment"] = {"torch": "2.13.0+cu130", "torch_cuda": "13.0", "torch_threads": 16}
    return record


def make_run(root: Path, run_id: str, gpu: bool = False, **extra_cells: Any) -> Path:
    """A finished run: run.json, cells/*.json and summary.jsonl, as the runner leaves them."""
    device = "cuda" if gpu else "cpu"
    rd = RunDir(root, run_id)
    rd.create()
    gpus = [{"index": 0, "name": "NVIDIA H200", "memory_total_bytes": 150_000_000_000, "uuid": "GPU-1"}]
    rd.write_run(
        RunMeta.model_validate(
            {
                "run_id": run_id,
                "run_name": run_id.split("-", 1)[-1],
                "started_at": "2026-11-29T02:33:24.403+00:00",
                "finished_at": "2026-11-29T02:34:33.497+00:00",
                "status": "finished",
                "schema_version": SCHEMA_VERSION,
                "tfbench_version": __version__,
                "measured_commit": {"sha": SHA, "source": "TFBENCH_COMMIT"},
                "config": {"model": "synthetic:llama-tiny", "device": device},
                "environment": {
                    "python": "3.11.7",
                    "platform": "Linux-x86_64",
                    "hostname": "bench-host-1",
                    "cpu": "AMD EPYC",
                    "cpu_count": 16 if gpu else 2,
                    "packages": {"torch": "2.13.0+cpu", "transformers": "5.24.0", "tfbench": __version__},
                    "cuda_available": gpu,
                    "cuda_unavailable_reason": None if gpu else "no NVIDIA driver reachable through NVML",
                    "driver_version": "580.1" if gpu else None,
                    "cuda_driver_version": "13.0" if gpu else None,
                    "gpus": gpus if gpu else [],
                },
                "counts": {"ok": 2},
            }
        )
    )
    records = [
        _record(run_id, _cell(0, device, "eager", 1), gpu=gpu),
        _record(run_id, _cell(1, device, "sdpa", 4), gpu=gpu),
    ]
    if not gpu:
        skip = _cell(2, device, "flash_attention_2", 1, skip_reason="flash-attn is not installed")
        records.append(_record(run_id, skip, status="skipped"))
        records.append(_record(run_id, _cell(3, device, "sdpa", 8), status="failed"))
    else:  # a continuous batching cell: runs of another shape, extra record keys
        cb = _record(
            run_id, _cell(2, device, "sdpa", 2, continuous_batching=True, compile="default"), gpu=True
        )
        cb["runs"] = [
            {
                "e2e_latency": r["e2e_latency"],
                "e2e_throughput": r["e2e_throughput"],
                "energy_j": r["energy_j"],
                "requests": [
                    {"e2e_latency": 0.02, "ttft": 0.01, "tpot": 0.003, "token_times": r["token_times"]}
                ],
            }
            for r in cb["runs"]
        ]
        cb.update(setup_time_s=0.5, continuous_batching_config={"page_size": 256}, shard="1-of-2")
        records.append(cb)
    for key, value in extra_cells.items():
        records[0][key] = value
    typed = [CellRecord.model_validate(r) for r in records]
    for record in typed:
        rd.write_cell(record)
    rd.write_summary(typed)
    (rd.logs / "note.log").write_text("worker output\n")
    return rd.path


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def jsonl_rows(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


def card_meta(data: bytes) -> dict[str, Any]:
    """The card's YAML header, parsed independently of bench.hub (as the Hub does: between '---' lines)."""
    text = data.decode()
    assert text.startswith("---\n")
    header, _ = text[4:].split("\n---\n", 1)
    meta = yaml.safe_load(header)
    assert isinstance(meta, dict)
    return meta


def check_type(value: Any, feature: dict[str, Any], where: str) -> None:
    """The value is what the card's feature declares (what datasets would cast it to)."""
    if value is None:
        return
    if "list" in feature:
        inner = feature["list"]
        assert isinstance(value, list), where
        for v in value:
            check_type(v, inner if isinstance(inner, dict) else {"dtype": inner}, where)
        return
    dtype = feature["dtype"]
    expected = {"string": str, "int64": int, "float64": float, "bool": bool}[dtype]
    assert type(value) is expected, f"{where}: {value!r} is not {dtype}"


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    yield from serve(monkeypatch, TOKEN)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "out", "20261129T023324Z-cpu-demo")


# ---------------------------------------------------------------------------------------------
# Files and card


def test_build_files_layout_and_card(run_dir: Path) -> None:
    files = hub.build_files(run_dir, repo_id=REPO)
    run_id = run_dir.name
    assert set(files) == {
        f"summarized/{run_id}.jsonl",
        f"full/{run_id}.jsonl",
        f"runs/{run_id}.json",
        "README.md",
    }
    meta = card_meta(files["README.md"])
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"summarized", "full"}
    assert configs["summarized"]["default"] is True and "default" not in configs["full"]
    for name, config in configs.items():
        (data_files,) = config["data_files"]
        assert data_files["split"] == "train"
        matched = [p for p in files if fnmatch.fnmatch(p, data_files["path"])]
        assert matched == [f"{name}/{run_id}.jsonl"]
    # The card declares every column, in file order, for both configs.
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    for name in ("summarized", "full"):
        rows = jsonl_rows(files[f"{name}/{run_id}.jsonl"])
        declared = [f["name"] for f in infos[name]["features"]]
        assert all(list(row) == declared for row in rows)
    assert json.loads(files[f"runs/{run_id}.json"])["run_id"] == run_id
    # Reading only: the same run gives the same bytes.
    assert hub.build_files(run_dir, repo_id=REPO) == files


def test_every_row_carries_commit_version_and_hardware(tmp_path: Path) -> None:
    cpu = make_run(tmp_path, "20261129T000000Z-cpu")
    gpu = make_run(tmp_path, "20261129T000001Z-gpu", gpu=True)
    for run, hardware, gpu_names in ((cpu, "cpu: AMD EPYC", []), (gpu, "1x NVIDIA H200", ["NVIDIA H200"])):
        files = hub.build_files(run, environ={"TFBENCH_BRANCH": "main"})
        for fmt in ("summarized", "full"):
            rows = jsonl_rows(files[f"{fmt}/{run.name}.jsonl"])
            assert rows
            for row in rows:
                assert row["measured_commit"] == SHA and row["measured_commit_source"] == "TFBENCH_COMMIT"
                assert row["branch"] == "main"
                assert row["tfbench_version"] == __version__
                assert row["run_id"] == run.name
                assert row["hardware"] == hardware and row["gpu_names"] == gpu_names
                assert row["gpu_name"] == (gpu_names[0] if gpu_names else None)
                assert row["cpu"] == "AMD EPYC" and row["hostname"] == "bench-host-1"
                assert row["torch_version"] == "2.13.0+cpu" and row["transformers_version"] == "5.24.0"
    # No TFBENCH_BRANCH: null, not a guess.
    rows = jsonl_rows(hub.build_files(cpu, environ={})[f"summarized/{cpu.name}.jsonl"])
    assert {row["branch"] for row in rows} == {None}


def test_columns_and_types_are_the_same_across_runs(tmp_path: Path) -> None:
    """What load_dataset needs to read many runs as one table: same keys, in the same order, each
    value of its declared type (a CPU run's all-null GPU columns beside a GPU run's numbers)."""
    runs = [make_run(tmp_path, "20261129T000000Z-cpu"), make_run(tmp_path, "20261129T000001Z-gpu", gpu=True)]
    built = [hub.build_files(r) for r in runs]
    assert built[0]["README.md"] == built[1]["README.md"]
    infos = {i["config_name"]: i["features"] for i in card_meta(built[0]["README.md"])["dataset_info"]}
    for fmt in ("summarized", "full"):
        features = {f["name"]: f for f in infos[fmt]}
        key_lists = set()
        for run, files in zip(runs, built):
            for n, line in enumerate(files[f"{fmt}/{run.name}.jsonl"].decode().splitlines()):
                row = json.loads(line)  # each line parses on its own
                key_lists.add(tuple(row))
                for key, value in row.items():
                    check_type(value, features[key], f"{fmt} {run.name} line {n} {key}")
        assert len(key_lists) == 1, f"{fmt}: rows differ in columns"
        assert list(key_lists.pop()) == list(features)
    # The summarized columns are the summary.jsonl columns behind the context columns.
    summarized = [name for name, _ in summarized_columns()]
    assert summarized[: len(CONTEXT_COLUMNS)] == [name for name, _ in CONTEXT_COLUMNS]
    assert [c for c in summary_columns() if c != "run_id"] == summarized[len(CONTEXT_COLUMNS) :]


def test_summarized_rows_are_the_summary_rows(run_dir: Path) -> None:
    summary = jsonl_rows((run_dir / "summary.jsonl").read_bytes())
    rows = jsonl_rows(hub.build_files(run_dir)[f"summarized/{run_dir.name}.jsonl"])
    assert [r["cell_id"] for r in rows] == [s["cell_id"] for s in summary]
    for row, srow in zip(rows, summary):
        assert {k: row[k] for k in srow} == srow


def test_full_rows_hold_every_raw_measurement(tmp_path: Path) -> None:
    run = make_run(tmp_path, "20261129T000001Z-gpu", gpu=True, future_field={"new": [1, 2]})
    records = {r.cell_id: r.to_dict() for r in RunDir(tmp_path, run.name).read_cells()}
    rows = jsonl_rows(hub.build_files(run)[f"full/{run.name}.jsonl"])
    assert len(rows) == len(records)
    for row in rows:
        record = records[row["cell_id"]]
        # The runs come back whole from the runs_* lists and runs_other.
        others = json.loads(row["runs_other"]) if row["runs_other"] else [{} for _ in record["runs"]]
        rebuilt = []
        for i, other in enumerate(others):
            run_values = {k: row[f"runs_{k}"][i] for k in RUN_SCALARS if row[f"runs_{k}"][i] is not None}
            if row["runs_token_times"][i] is not None:
                run_values["token_times"] = row["runs_token_times"][i]
            rebuilt.append({**run_values, **other})
        assert rebuilt == record["runs"]
        for metric in METRICS:
            assert row[f"{metric}_p50"] == record["stats"][metric]["p50"]
        assert json.loads(row["gpu_telemetry"]) == record["gpu_telemetry"]
        assert row["energy_per_run_j_p50"] == record["gpu_telemetry"]["energy_per_run_j"]["p50"]
    first = next(r for r in rows if r["cell_index"] == 0)
    assert json.loads(first["extra"]) == {"record": {"future_field": {"new": [1, 2]}}}
    cb = next(r for r in rows if r["continuous_batching"])
    assert cb["setup_time_s"] == 0.5 and cb["shard"] == "1-of-2" and cb["compile"] == "default"
    assert json.loads(cb["runs_other"])[0]["requests"][0]["ttft"] == 0.01


def test_card_update_keeps_prose_other_metadata_and_configs() -> None:
    existing = (
        "---\nlicense: apache-2.0\nconfigs:\n- config_name: mine\n  data_files: extra/*.csv\n  default: true\n"
        "- config_name: full\n  data_files: old/*.jsonl\n---\n# Our benchmark history\n\nWritten by hand.\n"
    )
    card = render_card(existing, REPO)
    meta, body = split_card(card)
    assert meta is not None
    assert meta["license"] == "apache-2.0"
    assert [c["config_name"] for c in meta["configs"]] == ["summarized", "full", "mine"]
    assert [c for c in meta["configs"] if c.get("default")] == [meta["configs"][0]]
    assert meta["configs"][1]["data_files"] == [{"split": "train", "path": "full/*.jsonl"}]
    assert body == "\n# Our benchmark history\n\nWritten by hand.\n"
    # A card tfbench generated: its generated block is rewritten in place, the rest kept.
    generated = render_card(None, REPO)
    edited = generated.replace("# tfbench results", "# tfbench results\n\nOur notes.")
    assert render_card(edited.replace(__version__, "0.0.1"), REPO) == edited
    assert render_card(generated, REPO) == generated


# ---------------------------------------------------------------------------------------------
# Pushing


def test_push_is_one_commit_with_both_formats_and_the_card(fake_hub: FakeHub, run_dir: Path) -> None:
    before = tree_digest(run_dir)
    result = hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, retries=2, backoff=0)
    assert tree_digest(run_dir) == before

    assert set(fake_hub.endpoints_called()) == EXPECTED_ENDPOINTS
    (create,) = fake_hub.calls("create_repo")
    assert create.json() == {
        "name": "results",
        "organization": "tfbench-org",
        "visibility": "private",
        "type": "dataset",
    }
    assert fake_hub.repos[REPO].private is True and fake_hub.repos[REPO].type == "dataset"
    (commit,) = fake_hub.commits(REPO)
    assert set(commit["files"]) == set(result.files)
    assert commit["files"] == hub.build_files(run_dir, repo_id=REPO)
    for text in (commit["summary"], commit["description"]):
        assert run_dir.name in text and SHA[:12] in text and __version__ in text and "AMD EPYC" in text
    assert result.repo_url == f"{fake_hub.endpoint}/datasets/{REPO}"
    assert result.commit_url.startswith(fake_hub.endpoint) and result.commit_oid == commit["oid"]
    assert result.attempts == 1 and result.card == "created" and fake_hub.sleeps == []
    # The token travels in the Authorization header only.
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake_hub.calls())
    assert not any(TOKEN.encode() in content for content in commit["files"].values())


def test_push_public_on_request(fake_hub: FakeHub, run_dir: Path) -> None:
    hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, private=False, backoff=0)
    assert fake_hub.calls("create_repo")[0].json()["visibility"] == "public"


def test_second_run_adds_files_and_keeps_the_card(fake_hub: FakeHub, tmp_path: Path) -> None:
    hub.push_run(make_run(tmp_path, "20261129T000000Z-a"), REPO, endpoint=fake_hub.endpoint, backoff=0)
    repo = fake_hub.repos[REPO]
    repo.files["README.md"] = repo.files["README.md"].replace(
        b"# tfbench results", b"# Nightly\n\nOur notes."
    )
    result = hub.push_run(
        make_run(tmp_path, "20261129T000001Z-b"), REPO, endpoint=fake_hub.endpoint, backoff=0
    )
    assert result.card == "updated"
    assert len(fake_hub.commits(REPO)) == 2
    assert {p for p in repo.files if p.endswith(".jsonl")} == {
        "summarized/20261129T000000Z-a.jsonl",
        "summarized/20261129T000001Z-b.jsonl",
        "full/20261129T000000Z-a.jsonl",
        "full/20261129T000001Z-b.jsonl",
    }
    assert b"# Nightly\n\nOur notes." in repo.files["README.md"]
    # The second commit did not need to change the card: only the new run's files.
    assert set(fake_hub.commits(REPO)[1]["files"]) == {
        "summarized/20261129T000001Z-b.jsonl",
        "full/20261129T000001Z-b.jsonl",
        "runs/20261129T000001Z-b.json",
    }


def test_pushing_the_same_run_again_commits_nothing_new(fake_hub: FakeHub, run_dir: Path) -> None:
    first = hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, backoff=0)
    second = hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, backoff=0)
    assert len(fake_hub.commits(REPO)) == 1
    assert second.commit_oid == first.commit_oid
    assert "repo_info" in fake_hub.endpoints_called()  # how huggingface_hub answers an empty commit


@pytest.mark.parametrize("status", [503, 429])
def test_transient_errors_are_retried_with_backoff(fake_hub: FakeHub, run_dir: Path, status: int) -> None:
    fake_hub.fail(status, times=2)
    events: list[dict[str, Any]] = []

    class Log:
        def emit(self, event: str, level: str = "info", **fields: Any) -> None:
            events.append({"event": event, "level": level, **fields})

    result = hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, retries=3, backoff=1.0, log=Log())
    assert result.attempts == 3
    assert len(fake_hub.commits(REPO)) == 1
    assert [r.status for r in fake_hub.calls("create_repo")] == [status, status, 200]
    first, second = fake_hub.sleeps
    assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0  # exponential, with jitter
    assert [(e["event"], e["status"], e["attempt"]) for e in events] == [
        ("push_retry", status, 1),
        ("push_retry", status, 2),
    ]
    assert TOKEN not in json.dumps(events)


def test_retry_after_is_honoured(fake_hub: FakeHub, run_dir: Path) -> None:
    fake_hub.fail(429, times=1, headers={"Retry-After": "7"})
    hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, backoff=0.01)
    assert fake_hub.sleeps == [7.0]


def test_a_failed_commit_is_retried_as_a_whole(fake_hub: FakeHub, run_dir: Path) -> None:
    fake_hub.fail(503, times=1, endpoints="commit")
    result = hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, backoff=0)
    assert result.attempts == 2
    assert [r.status for r in fake_hub.calls("create_repo")] == [200, 409]  # exists now: fine
    assert [r.status for r in fake_hub.calls("commit")] == [503, 200]
    assert len(fake_hub.commits(REPO)) == 1


def test_a_gateway_error_page_is_retried(fake_hub: FakeHub, run_dir: Path) -> None:
    fake_hub.fail(502, times=1, endpoints="validate_yaml", body="<html><body>502 Bad Gateway</body></html>")
    result = hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, backoff=0)
    assert result.attempts == 2 and len(fake_hub.commits(REPO)) == 1


def test_final_failure_names_the_repo_and_how_to_push_later(fake_hub: FakeHub, run_dir: Path) -> None:
    fake_hub.fail(500)
    before = tree_digest(run_dir)
    with pytest.raises(hub.PushError) as info:
        hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, retries=3, backoff=0)
    err = info.value
    message = str(err)
    assert REPO in message and "HTTP 500" in message and "after 4 attempts" in message
    assert f"tfbench push {run_dir} --repo {REPO}" in message
    assert err.status == 500 and err.retryable and err.attempts == 4 and err.repo_id == REPO
    assert len(fake_hub.calls("create_repo")) == 4 and fake_hub.commits(REPO) == []
    assert tree_digest(run_dir) == before
    assert TOKEN not in message


def test_auth_failure_fails_at_once_and_never_shows_the_token(
    fake_hub: FakeHub, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that echoes the credential it refused: the token must still not come out.
    fake_hub.fail(401, body={"error": f"Invalid credentials in Authorization header: Bearer {TOKEN}"})
    before = tree_digest(run_dir)
    with caplog.at_level(logging.DEBUG), pytest.raises(hub.PushError) as info:
        hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint, retries=5, backoff=0)
    err = info.value
    assert err.status == 401 and not err.retryable and err.attempts == 1
    assert fake_hub.sleeps == []
    # create_repo(exist_ok=True) checks with repo_info whether the repo exists; nothing more.
    assert fake_hub.endpoints_called() == ["create_repo", "repo_info"]
    assert "HF_TOKEN" in str(err) and REPO in str(err) and f"tfbench push {run_dir} --repo {REPO}" in str(err)
    assert err.__cause__ is None and err.__suppress_context__
    for text in (str(err), repr(err), *(r.getMessage() for r in caplog.records)):
        assert TOKEN not in text
    assert tree_digest(run_dir) == before


def test_the_token_is_scrubbed_from_committed_files(fake_hub: FakeHub, tmp_path: Path) -> None:
    run = make_run(tmp_path, "20261129T000000Z-leak")
    cell = next((run / "cells").glob("*.json"))
    record = json.loads(cell.read_text())
    record["error"] = {"kind": "exception", "log_tail": f"HTTP 401 with token {TOKEN}"}
    cell.write_text(json.dumps(record))
    hub.push_run(run, REPO, endpoint=fake_hub.endpoint, backoff=0)
    (commit,) = fake_hub.commits(REPO)
    assert not any(TOKEN.encode() in content for content in commit["files"].values())
    assert TOKEN in cell.read_text()  # the local results are left as they are


def test_token_comes_from_hf_token_or_the_argument(
    fake_hub: FakeHub, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.token = "hf_theOtherTokenXYZ0123456789"
    hub.push_run(run_dir, REPO, token="hf_theOtherTokenXYZ0123456789", endpoint=fake_hub.endpoint, backoff=0)
    monkeypatch.setenv("HF_TOKEN", "hf_theOtherTokenXYZ0123456789")
    hub.push_run(run_dir, "tfbench-org/other", endpoint=fake_hub.endpoint, backoff=0)
    assert len(fake_hub.commits("tfbench-org/other")) == 1
    monkeypatch.delenv("HF_TOKEN")
    n = len(fake_hub.calls())
    with pytest.raises(hub.PushConfigError, match="HF_TOKEN") as info:
        hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint)
    assert info.value.exit_code == EXIT_USAGE
    assert len(fake_hub.calls()) == n  # nothing was sent


def test_offline_mode_blocks_the_push(
    fake_hub: FakeHub, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.PushConfigError, match="HF_HUB_OFFLINE") as info:
        hub.push_run(run_dir, REPO, endpoint=fake_hub.endpoint)
    assert f"tfbench push {run_dir} --repo {REPO}" in str(info.value)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        hub.check_push_config(REPO, environ={"HF_TOKEN": TOKEN})
    assert fake_hub.calls() == []


def test_an_unreachable_hub_is_retried_then_reported(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub, "_sleep", lambda s: None)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    close_session()
    with pytest.raises(hub.PushError) as info:
        hub.push_run(run_dir, REPO, endpoint=f"http://127.0.0.1:{port}", retries=2, backoff=0)
    close_session()
    assert info.value.status is None and info.value.retryable and info.value.attempts == 3
    assert "no HTTP answer" in str(info.value) and "tfbench push" in str(info.value)


@pytest.mark.parametrize(
    "repo_id",
    [
        "",
        "name-only",
        "a/b/c",
        "https://huggingface.co/datasets/org/name",
        "org/na me",
        "org/bad--name",
        "org/x.git",
    ],
)
def test_malformed_repo_ids_are_usage_errors(repo_id: str) -> None:
    with pytest.raises(hub.PushConfigError) as info:
        hub.check_push_config(repo_id, environ={"HF_TOKEN": TOKEN})
    assert info.value.exit_code == EXIT_USAGE and "ORG/NAME" in str(info.value)


def test_well_formed_repo_ids_pass() -> None:
    for repo_id in ("org/name", "my-org/bench_results.v2", "User1/x"):
        assert hub.check_repo_id(repo_id) == repo_id
    with pytest.raises(hub.PushConfigError, match="HF_TOKEN"):
        hub.check_push_config("org/name", environ={})


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run.json"):
        hub.build_files(tmp_path)


def test_a_tensor_parallel_cell_keeps_its_tp_size_through_a_full_row() -> None:
    from bench.hub.schema import full_row, row_record

    cell = {
        "cell_id": "c" * 16,
        "name": "sdpa, no compile, b1 s8 n4, tp2",
        "model": "synthetic:llama-tiny",
        "dtype": "float32",
        "device": "cpu",
        "attn_implementation": "sdpa",
        "batch_size": 1,
        "sequence_length": 8,
        "num_tokens_to_generate": 4,
        "tp_size": 2,
    }
    record = CellRecord.model_validate(
        {"cell_id": cell["cell_id"], "status": "ok", "cell": cell, "tensor_parallel": {"tp_size": 2}}
    )
    back = CellRecord.model_validate(row_record(full_row({}, record)))
    assert back.cell.tp_size == 2 and back.cell.cell_id == cell["cell_id"]
