"""The end-to-end path against transformers releases other than the pinned one: 5.23.0 as an
unpacked wheel (imports with this environment), 5.17.0 in a venv of its own (the GPU machine's
release; its huggingface_hub is older), and `tfbench ab` between the two.

Built by `make test-compat` (scripts/compat_envs.sh), which points TFBENCH_COMPAT_DIR at them;
`make test` skips this module, and `.ci/run` runs `make test-compat`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_entrypoint, write_config

COMPAT = os.environ.get("TFBENCH_COMPAT_DIR")
pytestmark = pytest.mark.skipif(not COMPAT, reason="the release environments: run `make test-compat`")

# Continuous batching's options were renamed after 5.17 (block_size -> page_size): both cells.
MATRIX = {"continuous_batching": [False, True], "batch_size": 2, "processes": 2, "measurement_iterations": 4}


@pytest.fixture(scope="module")
def releases():
    root = Path(COMPAT or "")
    found = {
        "5.23.0": root / "transformers-5.23.0",
        "5.17.0": root / "venv-5.17.0" / "bin" / "python",
        "5.17.0-wheel": root / "transformers-5.17.0-wheel",
    }
    missing = [str(p) for p in found.values() if not p.exists()]
    assert not missing, f"not built: {missing} (make test-compat builds them)"
    return found


def _run(tmp_path, source, name):
    config = write_config(tmp_path, run_name=name, **MATRIX)
    output = tmp_path / "results"
    done = run_entrypoint(config, output, env={"TFBENCH_TRANSFORMERS_SOURCE": str(source)}, timeout=600)
    (run_dir,) = output.iterdir()
    cells = [json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))]
    return done, json.loads((run_dir / "run.json").read_text()), cells


@pytest.mark.parametrize("version", ["5.23.0", "5.17.0"])
def test_each_release_measures_every_cell(tmp_path, releases, version):
    done, run, cells = _run(tmp_path, releases[version], f"tf-{version}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert run["environment"]["packages"]["transformers"] == version
    assert run["code_under_test"]["transformers"] == version
    assert [c["status"] for c in cells] == ["ok", "ok"]
    for cell in cells:
        assert cell["worker_environment"]["transformers"] == version
    cb = next(c for c in cells if c["cell"]["continuous_batching"])
    if version == "5.17.0":  # its config names the page size block_size, and has no auto switch
        assert any("page_size passed as block_size" in note for note in cb["api_adapted"])
        assert cb["continuous_batching_config"]["block_size"] == 256
    else:
        assert "api_adapted" not in cb


def test_a_release_that_cannot_import_here_exits_2_naming_the_import(tmp_path, releases):
    config = write_config(tmp_path)
    done = run_entrypoint(
        config, tmp_path / "results", env={"TFBENCH_TRANSFORMERS_SOURCE": str(releases["5.17.0-wheel"])}
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "cannot be imported" in done.stderr and "No module named 'httpx'" in done.stderr
    assert "Traceback" not in done.stderr


def test_ab_between_two_releases(tmp_path, releases):
    config = write_config(tmp_path, run_name="releases", **MATRIX)
    output = tmp_path / "results"
    done = run_entrypoint(
        config,
        output,
        "ab",
        str(releases["5.23.0"]),
        str(releases["5.17.0"]),
        "--format",
        "json",
        timeout=900,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]  # either verdict is an answer here
    verdicts = json.loads(done.stdout)
    assert len(verdicts["cells"]) == 2
    assert verdicts["drift"].startswith("none")  # one invocation: no run-to-run term
    runs = {
        json.loads(p.read_text())["ab"]["side"]: json.loads(p.read_text()) for p in output.glob("*/run.json")
    }
    assert runs["base"]["code_under_test"]["transformers"] == "5.23.0"
    assert runs["new"]["code_under_test"]["transformers"] == "5.17.0"
    assert runs["new"]["environment"]["packages"]["huggingface_hub"].startswith("1.")
