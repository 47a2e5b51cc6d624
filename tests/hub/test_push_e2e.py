"""A run with push_to_hub, end to end through the entrypoint, against a local fake Hub: one commit
after the run; a failed upload keeps the results, exits 3 and says how to push later; `tfbench
push` then uploads it; a finished run is not uploaded twice."""

from __future__ import annotations

import json

from tests.conftest import only_run_dir, run_entrypoint, write_config
from tests.hub_server import FakeHub

TOKEN = "hf_e2eTestTokenThatMustNeverAppear"


def _env(hub: FakeHub) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": TOKEN,
        "NO_PROXY": "127.0.0.1,localhost",
        "TFBENCH_PUSH_TO_HUB": "bench-org/tfbench-results",
    }


def _files(tree) -> dict[str, bytes]:
    return {p: p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_run_pushes_one_commit_after_it_finished(tmp_path):
    config = write_config(tmp_path)
    with FakeHub() as hub:
        proc = run_entrypoint(config, tmp_path / "out", env=_env(hub))
        assert proc.returncode == 0, proc.stderr
        (commit,) = hub.commits("bench-org/tfbench-results")
    run_dir = only_run_dir(tmp_path / "out")
    names = set(commit["files"])
    assert any(n.startswith("summarized/") for n in names) and any(n.startswith("full/") for n in names)
    assert "README.md" in names
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["pushed"]["repo"] == "bench-org/tfbench-results"
    assert meta["pushed"]["commit_url"].startswith(hub.endpoint)
    assert TOKEN not in proc.stderr + proc.stdout


def test_failed_upload_keeps_results_exits_3_and_push_later_works(tmp_path):
    config = write_config(tmp_path)
    with FakeHub() as hub:
        hub.fail(401)  # an auth failure: no retries
        proc = run_entrypoint(config, tmp_path / "out", env=_env(hub))
    assert proc.returncode == 3, proc.stderr
    assert "tfbench push" in proc.stderr and "--repo" in proc.stderr
    assert TOKEN not in proc.stderr + proc.stdout
    run_dir = only_run_dir(tmp_path / "out")
    before = _files(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "finished" and "pushed" not in meta
    with FakeHub() as hub:
        env = _env(hub)
        later = run_entrypoint(
            config, tmp_path / "out", "push", str(run_dir), "--repo", "bench-org/x", env=env
        )
        assert later.returncode == 0, later.stderr
        assert len(hub.commits("bench-org/x")) == 1
    after = _files(run_dir)
    assert set(after) == set(before)
    changed = [p.name for p in after if after[p] != before[p]]
    assert changed == ["run.json"]  # only the record of the push


def test_missing_token_is_exit_2_before_anything_runs(tmp_path):
    config = write_config(tmp_path)
    proc = run_entrypoint(
        config,
        tmp_path / "out",
        env={"TFBENCH_PUSH_TO_HUB": "bench-org/r", "HF_HUB_OFFLINE": "0", "HF_TOKEN": ""},
    )
    assert proc.returncode == 2
    assert "HF_TOKEN" in proc.stderr
    assert not (tmp_path / "out").exists() or not [p for p in (tmp_path / "out").iterdir() if p.is_dir()]


def test_bad_repo_id_is_exit_2(tmp_path):
    config = write_config(tmp_path, push_to_hub="not a repo")
    proc = run_entrypoint(config, tmp_path / "out")
    assert proc.returncode == 2 and "push_to_hub" in proc.stderr and "ORG/NAME" in proc.stderr


def test_rerun_of_a_named_finished_run_pushes_what_failed_before(tmp_path):
    """A Kubernetes pod retried after exit 3: the run is not measured again, only uploaded."""
    config = write_config(tmp_path)
    with FakeHub() as hub:
        hub.fail(401)
        first = run_entrypoint(config, tmp_path / "out", env={**_env(hub), "TFBENCH_RUN_ID": "nightly"})
    assert first.returncode == 3, first.stderr
    cells_before = _files(tmp_path / "out" / "nightly" / "cells")
    with FakeHub() as hub:
        again = run_entrypoint(config, tmp_path / "out", env={**_env(hub), "TFBENCH_RUN_ID": "nightly"})
        assert again.returncode == 0, again.stderr
        assert "already finished" in again.stderr
        assert len(hub.commits("bench-org/tfbench-results")) == 1
        third = run_entrypoint(config, tmp_path / "out", env={**_env(hub), "TFBENCH_RUN_ID": "nightly"})
        assert third.returncode == 0 and "already pushed" in third.stderr
        assert len(hub.commits("bench-org/tfbench-results")) == 1
    assert _files(tmp_path / "out" / "nightly" / "cells") == cells_before


def test_ab_pushes_both_runs(tmp_path):
    """`tfbench ab` with push_to_hub uploads each side's run, as `run` uploads its one."""
    from tests.transformers_copies import transformers_copy

    source = transformers_copy(tmp_path / "tf")
    config = write_config(tmp_path, measurement_iterations=2)  # one process a side: only the uploads matter
    with FakeHub() as hub:
        proc = run_entrypoint(config, tmp_path / "out", "ab", str(source), str(source), env=_env(hub))
        assert proc.returncode in (0, 1), proc.stderr
        commits = hub.commits("bench-org/tfbench-results")
    assert len(commits) == 2
    for run_dir in (tmp_path / "out").iterdir():
        assert json.loads((run_dir / "run.json").read_text())["pushed"]["repo"] == "bench-org/tfbench-results"
