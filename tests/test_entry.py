"""The container entry: its defaults, subcommands, preflight errors and JSON-lines logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, cells_by_id, clean_env, only_run_dir, run_entrypoint, write_config


def _entry(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "entrypoint.py"), *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_empty_config_directory_says_how_to_mount_one(tmp_path):
    (tmp_path / "cfg").mkdir()
    proc = _entry(cwd=tmp_path, TFBENCH_CONFIG=str(tmp_path / "cfg"), TFBENCH_OUTPUT=str(tmp_path / "out"))
    assert proc.returncode == 2
    assert f"no config found in directory {tmp_path / 'cfg'}" in proc.stderr
    assert "-v ./cfg:/cfg" in proc.stderr and "TFBENCH_CONFIG=demo" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_config_file_is_exit_2(tmp_path):
    proc = _entry(cwd=tmp_path, TFBENCH_CONFIG=str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "no config found" in proc.stderr


def test_demo_config_and_subcommands_pass_through(tmp_path):
    proc = _entry("plan", "--json", cwd=tmp_path, TFBENCH_CONFIG="demo")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source"].endswith("(embedded default)")
    assert _entry("presets", cwd=tmp_path).returncode == 0
    version = _entry("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("tfbench ")


def test_json_logs_are_one_object_per_line(tmp_path):
    config = write_config(tmp_path, attn_implementation=["eager", "flash_attention_2"])
    output = tmp_path / "out"
    proc = run_entrypoint(config, output, env={"TFBENCH_LOG_FORMAT": "json"})
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]  # every line parses
    assert proc.stdout == ""  # no tables: the events carry the results
    names = [e["event"] for e in events]
    assert names[0] == "run_started" and names[-1] == "run_finished"
    done = {e["cell_id"]: e for e in events if e["event"] == "cell_done"}
    records = cells_by_id(only_run_dir(output))
    assert set(done) == set(records)
    for cid, e in done.items():
        assert e["status"] == records[cid]["status"]
        assert {"ts", "level", "run_id"} <= set(e)
        if e["status"] == "ok":
            assert e["e2e_latency_p50"] == records[cid]["stats"]["e2e_latency"]["p50"]
        else:
            assert e["reason"] and e["level"] == "info"  # a skip is not a warning
    assert events[-1]["counts"] == {"ok": 1, "skipped": 1}


def test_json_log_errors_are_json_too(tmp_path):
    config = write_config(tmp_path, batch_size=0)
    proc = run_entrypoint(config, tmp_path / "out", env={"TFBENCH_LOG_FORMAT": "json"})
    assert proc.returncode == 2
    (event,) = [json.loads(line) for line in proc.stderr.splitlines()]
    assert event["level"] == "error" and event["exit_code"] == 2 and "batch_size" in event["message"]


def test_unknown_log_format_is_exit_2(tmp_path):
    config = write_config(tmp_path)
    proc = run_entrypoint(config, tmp_path / "out", env={"TFBENCH_LOG_FORMAT": "xml"})
    assert proc.returncode == 2
    assert "TFBENCH_LOG_FORMAT = 'xml': allowed: human, json" in proc.stderr
