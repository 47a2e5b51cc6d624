"""Results that outlive the machine: runs synced to a real S3-compatible server (moto, on
127.0.0.1), restored on an empty machine, with the sink down, shards merged from the sink, two
machines racing, and no credential anywhere."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, TINY, clean_env, wait_for
from tests.s3_server import S3Server, s3_server

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzSecretThatMustNeverAppear"
# Cells that take about a second each, so that a run can be stopped or watched between them.
SLOW = {
    **TINY,
    "model": "synthetic:sleep",
    "model_config": {"decode_sleep_s": 0.04},
    "attn_implementation": "eager",
    "batch_size": [1, 2, 3, 4, 5],
    "num_tokens_to_generate": 6,
}


@pytest.fixture(scope="module")
def server():
    with s3_server() as s3:
        yield s3


@pytest.fixture
def s3(server: S3Server) -> S3Server:
    if not server.running:  # a test stopped it and failed before starting it again
        server.start()
    server.new_bucket()  # a fresh bucket per test, in the module's server
    return server


def _config(tmp: Path, **fields: Any) -> Path:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, **fields}))
    return path


def _env(s3: S3Server, prefix: str = "runs", **extra: str) -> dict[str, str]:
    env = s3.subprocess_env(clean_env())
    env.update(
        AWS_SECRET_ACCESS_KEY=SECRET, TFBENCH_SYNC_TO=s3.url(prefix), TFBENCH_SYNC_LEASE_S="3", **extra
    )
    return env


def _start(config: Path, output: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    env = {**env, "TFBENCH_CONFIG": str(config), "TFBENCH_OUTPUT": str(output)}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "entrypoint.py")],
        env=env,
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(config: Path, output: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = _start(config, output, env)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _objects(s3: S3Server, prefix: str = "runs") -> dict[str, bytes]:
    client = s3.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            key = item["Key"]
            try:
                out[key[len(prefix) + 1 :]] = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
            except client.exceptions.NoSuchKey:
                continue  # an old lease generation, deleted since the listing
    return out


def _cells(objects: dict[str, bytes], run_id: str) -> dict[str, dict[str, Any]]:
    return {
        name.rsplit("/", 1)[1][:-5]: json.loads(data)
        for name, data in objects.items()
        if name.startswith(f"{run_id}/cells/")
    }


def test_a_run_is_copied_to_the_sink_without_credentials(s3: S3Server, tmp_path: Path) -> None:
    config = _config(tmp_path, attn_implementation=["eager", "sdpa"], profile=4)
    proc = _run(config, tmp_path / "out", _env(s3, TFBENCH_RUN_ID="synced"))
    assert proc.returncode == 0, proc.stderr
    objects = _objects(s3)
    local = {
        str(p.relative_to(tmp_path / "out")): p.read_bytes()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }
    assert len([n for n in local if n.startswith("synced/traces/")]) == 2  # the profiler traces go too
    assert {n for n in objects if "/lease/" not in n} == set(local)
    for name, data in local.items():
        assert objects[name] == data, name
    # the key is used (moto accepts it) and written nowhere: files here, objects there, output
    everything = b"".join(local.values()) + b"".join(objects.values())
    assert SECRET.encode() not in everything
    assert SECRET not in proc.stdout + proc.stderr


def test_a_replaced_machine_continues_from_the_sink(s3: S3Server, tmp_path: Path) -> None:
    config = _config(tmp_path, **SLOW)
    env = _env(s3, TFBENCH_RUN_ID="spot")
    first = _start(config, tmp_path / "vm1", env)
    try:
        wait_for(lambda: len(_cells(_objects(s3), "spot")) >= 2, timeout=120)
        before = _cells(_objects(s3), "spot")
        first.send_signal(signal.SIGKILL)  # the VM is gone: no chance to record anything
        first.wait(timeout=30)
    finally:
        first.kill()
    shutil.rmtree(tmp_path / "vm1")  # ... and so is its disk
    second = _run(config, tmp_path / "vm2", env)
    assert second.returncode == 0, second.stderr
    assert "restored run spot" in second.stderr
    assert "the sink already holds" not in second.stderr  # what it restored is not sent back
    after = _cells(_objects(s3), "spot")
    assert len(after) == len(SLOW["batch_size"]) and all(r["status"] == "ok" for r in after.values())
    for cell_id, record in before.items():  # measured once, on the first machine, never again
        assert after[cell_id]["started_at"] == record["started_at"]
        assert after[cell_id]["worker_pid"] == record["worker_pid"]
    run = json.loads((tmp_path / "vm2" / "spot" / "run.json").read_text())
    assert len(run["invocations"]) == 2 and run["status"] == "finished"


def test_the_sink_down_for_part_of_the_run(s3: S3Server, tmp_path: Path) -> None:
    config = _config(tmp_path, **SLOW)
    proc = _start(config, tmp_path / "out", _env(s3, TFBENCH_RUN_ID="outage"))
    try:
        wait_for(lambda: len(_cells(_objects(s3), "outage")) >= 1, timeout=120)
        s3.stop()
        done = tmp_path / "out" / "outage" / "cells"
        # cells go on meanwhile: wait until two more have ended while the sink is down
        wait_for(
            lambda: sum('"status": "ok"' in p.read_text() for p in done.glob("*.json")) >= 3, timeout=120
        )
        s3.start()
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "the results stay here and go up when it answers again" in err
    cells = _cells(_objects(s3), "outage")
    assert len(cells) == len(SLOW["batch_size"]) and all(r["status"] == "ok" for r in cells.values())


def test_a_sink_down_to_the_end_exits_3_and_the_next_invocation_catches_up(
    s3: S3Server, tmp_path: Path
) -> None:
    config = _config(tmp_path)
    env = _env(s3, TFBENCH_RUN_ID="late")
    s3.stop()
    try:
        down = _run(config, tmp_path / "out", env)
    finally:
        s3.start()
    assert down.returncode == 3, down.stderr
    assert "could not be copied to" in down.stderr and "Traceback" not in down.stderr
    assert json.loads((tmp_path / "out" / "late" / "run.json").read_text())["status"] == "finished"
    again = _run(config, tmp_path / "out", env)
    assert again.returncode == 0, again.stderr
    objects = _objects(s3)
    assert "late/summary.jsonl" in objects and len(_cells(objects, "late")) == 1


def test_shards_merge_from_the_sink_without_a_shared_directory(s3: S3Server, tmp_path: Path) -> None:
    config = _config(tmp_path, batch_size=[1, 2, 3], profile=4)
    env = _env(s3, TFBENCH_RUN_ID="sharded", TFBENCH_SHARD_COUNT="2")
    for index in (0, 1):  # two machines, each with its own empty disk
        proc = _run(config, tmp_path / f"pod{index}", {**env, "JOB_COMPLETION_INDEX": str(index)})
        assert proc.returncode == 0, proc.stderr
    assert "merged" in proc.stderr  # the last shard merged from the sink
    objects = _objects(s3)
    merged = json.loads(objects["sharded/run.json"])
    assert merged["status"] == "finished" and merged["counts"]["ok"] == 3
    assert len(_cells(objects, "sharded")) == 3
    assert {n.split("/")[2] for n in objects if n.startswith("sharded/shards/")} == {"0-of-2", "1-of-2"}
    # each merged record names its trace where the sink holds it (the shard's), as gzip
    last = tmp_path / "pod1" / "sharded"
    for record in _cells(objects, "sharded").values():
        trace = record["profile"]["trace"]
        assert trace.startswith("shards/") and objects[f"sharded/{trace}"][:2] == b"\x1f\x8b"
        # the last shard downloaded the other's trace, byte for byte
        assert (last / trace).read_bytes() == objects[f"sharded/{trace}"]
    # tfbench merge with the sink's URL does the same from anywhere
    merge = subprocess.run(
        [sys.executable, str(ROOT / "entrypoint.py"), "merge", s3.url("runs") + "/sharded"],
        env=_env(s3),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert merge.returncode == 0, merge.stderr


def test_two_machines_on_one_run_never_record_a_cell_twice(s3: S3Server, tmp_path: Path) -> None:
    config = _config(tmp_path, **SLOW)
    env = _env(s3, TFBENCH_RUN_ID="race")
    first = _start(config, tmp_path / "a", env)
    wait_for(lambda: any(n.startswith("race/lease/") for n in _objects(s3)), timeout=60)
    second = _run(config, tmp_path / "b", env)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    assert "is being worked on by" in second.stderr
    cells = _cells(_objects(s3), "race")
    assert len(cells) == len(SLOW["batch_size"])
    assert not list((tmp_path / "b").rglob("cells/*.json"))  # the second machine measured nothing
