"""The image in real containers: a benchmark run with mounted /cfg and /results, the preflight
errors, the user, the labels. Run by `make test-image` (scripts/test_image.sh), which builds the
CPU variant, starts a private Docker daemon and sets TFBENCH_IMAGE and DOCKER_HOST; `make test`
does not collect this directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import __version__
from tests.conftest import TINY

IMAGE = os.environ.get("TFBENCH_IMAGE", "")
if not IMAGE:  # fail rather than skip: a run of this file that tests nothing must not pass
    pytest.fail("TFBENCH_IMAGE is not set: run `make test-image`, which builds the image", pytrace=False)

UID = 1000
TIMEOUT_S = 600
# The suite's tiny synthetic Llama on the CPU, over two attention implementations.
CONFIG: dict[str, Any] = {**TINY, "attn_implementation": ["eager", "sdpa"]}


@pytest.fixture(scope="module")
def client():
    import docker  # the dev extra has it; imported here so that `make test` never needs it

    c = docker.from_env(timeout=TIMEOUT_S)
    c.ping()
    yield c
    c.close()


def run(
    client,
    cfg: Path | None = None,
    results: Path | None = None,
    entrypoint: list[str] | None = None,
    command: list[str] | None = None,
    one_line: bool = True,
) -> tuple[int, str]:
    """Runs the image without a network, waits, and returns the exit code and the output."""
    volumes = {}
    if cfg is not None:
        volumes[str(cfg)] = {"bind": "/cfg", "mode": "ro"}
    if results is not None:
        volumes[str(results)] = {"bind": "/results", "mode": "rw"}
    container = client.containers.run(
        IMAGE, command=command, entrypoint=entrypoint, volumes=volumes, network_mode="none", detach=True
    )
    try:
        code = container.wait(timeout=TIMEOUT_S)["StatusCode"]
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True, v=True)
    return code, " ".join(output.split()) if one_line else output  # one line: the console wraps long messages


def config_dir(path: Path, **fields: Any) -> Path:
    path.mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump({**CONFIG, **fields}))
    return path


def results_dir(path: Path) -> Path:
    """A results directory the container's user can write to, as a host user would make one."""
    path.mkdir()
    if os.geteuid() == 0:
        os.chown(path, UID, UID)
    else:
        path.chmod(0o777)
    return path


@pytest.fixture(scope="module")
def benchmark(client, tmp_path_factory):
    base = tmp_path_factory.mktemp("image")
    results = results_dir(base / "results")
    code, output = run(client, cfg=config_dir(base / "cfg"), results=results)
    return {"code": code, "output": output, "results": results}


def test_run_exits_0(benchmark):
    assert benchmark["code"] == 0, benchmark["output"]
    assert "Traceback" not in benchmark["output"]


def test_results_on_the_host(benchmark):
    runs = [p for p in benchmark["results"].iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    run_dir = runs[0]
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["status"] == "finished"
    assert run_json["tfbench_version"] == __version__
    assert "+cpu" in run_json["environment"]["packages"]["torch"]
    plan = run_json["plan"]["cells"]
    assert sorted(c["attn_implementation"] for c in plan) == ["eager", "sdpa"]
    ids = {c["cell_id"] for c in plan}
    assert {p.stem for p in (run_dir / "cells").glob("*.json")} == ids
    for cell_id in ids:
        record = json.loads((run_dir / "cells" / f"{cell_id}.json").read_text())
        assert record["status"] == "ok", record.get("error") or record.get("reason")
        for metric in ("e2e_latency", "ttft", "tpot"):
            assert record["stats"][metric]["mean"] > 0, metric
        assert record["stats"]["e2e_latency"]["n"] == CONFIG["measurement_iterations"]
    rows = [json.loads(line) for line in (run_dir / "summary.jsonl").read_text().splitlines()]
    assert {r["cell_id"] for r in rows} == ids
    assert all(r["status"] == "ok" for r in rows)


def test_files_written_by_uid_1000(benchmark):
    written = [p for p in benchmark["results"].rglob("*")]
    assert written
    assert {p.stat().st_uid for p in written} == {UID}


def test_runs_as_uid_1000(client):
    assert client.images.get(IMAGE).attrs["Config"]["User"] == f"{UID}:{UID}"
    code, output = run(client, entrypoint=["id", "-u"])
    assert (code, output.strip()) == (0, str(UID))


def test_tfbench_version(client):
    code, output = run(client, entrypoint=["tfbench", "--version"])
    assert (code, output.strip()) == (0, f"tfbench {__version__}")


def test_labels_and_config(client):
    attrs = client.images.get(IMAGE).attrs["Config"]
    labels = attrs["Labels"]
    assert labels["org.opencontainers.image.title"] == "tfbench"
    assert labels["org.opencontainers.image.description"]
    assert labels["org.opencontainers.image.version"] == os.environ.get("TFBENCH_IMAGE_VERSION", __version__)
    assert labels["org.opencontainers.image.revision"] == os.environ.get(
        "TFBENCH_IMAGE_REVISION", labels["org.opencontainers.image.revision"]
    )
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert "org.opencontainers.image.source" in labels
    assert attrs["Entrypoint"] == ["/usr/bin/tini", "--", "python", "/app/entrypoint.py"]
    env = dict(item.split("=", 1) for item in attrs["Env"])
    assert env["TFBENCH_CONFIG"] == "/cfg"
    assert env["TFBENCH_OUTPUT"] == "/results"
    assert env["HF_HOME"] == "/cache/huggingface"
    assert env["KERNELS_CACHE"] == "/opt/kernels"  # outside the /cache volume
    assert labels["io.github.tfbench.hub-kernels"] == ""  # the CPU variant fetches none
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert "HF_HUB_OFFLINE" not in env
    assert set(attrs["Volumes"]) == {"/results", "/cache"}


def test_without_flash_attn_its_cells_are_skipped_with_the_reason(client, tmp_path):
    """The CPU variant is built with FLASH_ATTN=none, as a CUDA image can be, and without kernels:
    a plan for a GPU keeps flash_attention_2 and hub kernel cells, skipped with the reason, and
    runs the rest."""
    from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION

    kernel = "kernels-community/flash-attn2@v4"
    attns = ["sdpa", "flash_attention_2", kernel]
    cfg = config_dir(tmp_path / "cfg", device="cuda", attn_implementation=attns)
    code, output = run(client, cfg=cfg, command=["plan", "--json"], one_line=False)
    assert code == 0, output
    plan, _ = json.JSONDecoder().raw_decode(output[output.index("{") :])  # stderr may follow
    assert plan["capabilities"]["flash_attn"] is False
    assert plan["capabilities"]["kernels_required"] == [KERNELS_MIN_VERSION, KERNELS_MAX_VERSION]
    reasons = {c["attn_implementation"]: c["skip_reason"] for c in plan["cells"]}
    assert reasons == {
        "sdpa": None,
        "flash_attention_2": "flash_attention_2 needs the flash-attn package, which is not installed",
        kernel: f"{kernel} is a hub kernel: it needs the kernels package (transformers asks for "
        f"kernels >= {KERNELS_MIN_VERSION}, < {KERNELS_MAX_VERSION}), which is not installed",
    }


@pytest.mark.parametrize("mount", ["empty", "none"])
def test_no_config_exits_2_naming_cfg(client, tmp_path, mount):
    empty = tmp_path / "cfg"
    empty.mkdir()
    cfg = empty if mount == "empty" else None
    code, output = run(client, cfg=cfg, results=results_dir(tmp_path / "results"))
    assert code == 2, output
    assert "/cfg" in output and "config" in output
    assert "docker run -v ./cfg:/cfg" in output  # says how to mount one
    assert "Traceback" not in output


def test_cuda_without_gpu_exits_2_naming_gpus(client, tmp_path):
    cfg = config_dir(tmp_path / "cfg", device="cuda")
    results = results_dir(tmp_path / "results")
    code, output = run(client, cfg=cfg, results=results)
    assert code == 2, output
    assert "--gpus" in output
    assert "Traceback" not in output
    assert not [p for p in results.iterdir() if p.is_dir()]  # nothing was run


def test_unwritable_results_exits_2(client, tmp_path):
    results = tmp_path / "results"
    results.mkdir(mode=0o755)  # owned by this user, not by uid 1000
    if os.geteuid() == UID:
        pytest.skip("the results directory belongs to uid 1000 here")
    code, output = run(client, cfg=config_dir(tmp_path / "cfg"), results=results)
    assert code == 2, output
    assert "/results" in output and "not writable" in output
    assert "Traceback" not in output
    assert not list(results.iterdir())


def test_docker_stop_then_restart_continues_the_run(client, tmp_path):
    """The spot path in a real container: `docker stop` (SIGTERM through tini) mid-run, exit 143
    well inside docker's 10 s, then the same command again finishes the run; each cell once."""
    cfg = config_dir(
        tmp_path / "cfg", attn_implementation="sdpa", batch_size=[1, 2, 3, 4, 5, 6], measurement_iterations=20
    )
    results = results_dir(tmp_path / "results")
    volumes = {str(cfg): {"bind": "/cfg", "mode": "ro"}, str(results): {"bind": "/results", "mode": "rw"}}
    container = client.containers.run(IMAGE, volumes=volumes, network_mode="none", detach=True)
    try:
        deadline = time.monotonic() + 120
        while not list(results.glob("*/cells/*.json")):  # a cell has started
            assert time.monotonic() < deadline, container.logs().decode(errors="replace")
            time.sleep(0.1)
        t = time.monotonic()
        container.stop(timeout=10)
        stop_s = time.monotonic() - t
        code = container.wait(timeout=60)["StatusCode"]
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True, v=True)
    assert code == 143, output
    assert stop_s < 5, stop_s
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    code, output = run(client, cfg=cfg, results=results)
    assert code == 0, output
    assert "continues" in output
    assert [p for p in results.iterdir() if p.is_dir()] == [run_dir]
    records = [json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    assert all("ok" not in [a["status"] for a in r["attempts"]] for r in records)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "finished" and len(meta["invocations"]) == 2


def test_ab_inside_the_image(client, tmp_path):
    """`tfbench ab` in the container: BASE the image's own site-packages (a directory holding
    transformers and its metadata, as an unpacked wheel does), NEW the image's python (an
    environment); two runs on the host, one verdict."""
    results = results_dir(tmp_path / "results")
    cfg = config_dir(tmp_path / "cfg", processes=2, measurement_iterations=4, run_name="ab")
    site = "$(python -c 'import os, transformers; print(os.path.dirname(os.path.dirname(transformers.__file__)))')"
    script = f'exec python /app/entrypoint.py ab "{site}" /opt/venv/bin/python --format markdown'
    code, output = run(
        client,
        cfg=cfg,
        results=results,
        entrypoint=["/usr/bin/tini", "--", "sh", "-c", script],
        one_line=False,
    )
    assert code in (0, 1), output  # identical code: any verdict but a failure is an answer
    assert "### tfbench compare:" in output
    assert "Traceback" not in output
    runs = {p.name: json.loads((p / "run.json").read_text()) for p in results.iterdir() if p.is_dir()}
    sides = {r["ab"]["side"]: r for r in runs.values()}
    assert set(sides) == {"base", "new"}
    base = sides["base"]["code_under_test"]
    assert (base["kind"], base["version"]) == (
        "wheel",
        sides["base"]["environment"]["packages"]["transformers"],
    )
    assert sides["new"]["code_under_test"]["kind"] == "environment"
    assert all(r["status"] == "finished" for r in runs.values())


def test_benchmark_v2_command_line_inside_the_image(client, tmp_path):
    """`docker run ... tfbench v2 <benchmark_v2's flags>`: results go to the mounted /results, in
    tfbench's run directory and benchmark_v2's file beside it."""
    results = results_dir(tmp_path / "results")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "configs.jsonl").write_text(
        '{"attn_implementation": "eager"}\n{"attn_implementation": "flex_attention", "continuous_batching": true}\n'
    )
    flags = ["--model-id", "synthetic:llama-tiny", "--config-file", "/cfg/configs.jsonl"]
    flags += ["-w", "1", "-i", "2", "-b", "1", "-s", "16", "-n", "4", "--no-gpu-monitoring"]
    code, output = run(client, cfg=cfg, results=results, command=["v2", *flags])
    assert code == 0, output
    assert "Traceback" not in output
    assert "benchmark_v2 would rewrite" in output  # flex_attention with continuous batching
    run_dirs = [p for p in results.iterdir() if (p / "run.json").is_file()]
    assert len(run_dirs) == 1
    (v2_file,) = (results / "synthetic:llama-tiny").glob("*_benchmark_*.json")
    entries = list(json.loads(v2_file.read_text()).values())
    assert [e["config"]["name"] for e in entries] == [
        "w1_i2-unmonitored-b1_s16_n4-eager-uncompiled-unkernelized-generate",
        "w1_i2-unmonitored-b1_s16_n4-flex_attention-uncompiled-unkernelized-cb",
    ]
    assert [e["metadata"]["success"] for e in entries] == [True, False]
    assert len(entries[0]["measurements"]["e2e_latency"]) == 2
