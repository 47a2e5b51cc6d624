"""The durable sink on the Hub (hf://datasets/ORG/NAME/PREFIX, bench.run.sink and sink_hub)
against the local fake Hub (tests/hub_server.py), through huggingface_hub's HfFileSystem: its
operations, exclusive creates (also under a race), leases, retries of a Hub that fails for a
while, no token in any message; and a run synced to the Hub end to end, through entrypoint.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from huggingface_hub.utils import _http as hf_http

from bench.run.sink import (
    KEEP_GENERATIONS,
    Sink,
    SinkError,
    acquire_lease,
    release_lease,
    renew_lease,
)
from tests.conftest import ROOT, clean_env, race, run_entrypoint, write_config
from tests.hub_server import FakeHub, Repo, serve
from tests.run.test_sink import basic_operations

TOKEN = "hf_sinkTestTokenThatMustNeverAppear0123"
REPO = "bench-org/tfbench-sink"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake Hub with an existing dataset repository, every request checked for the token.
    huggingface_hub's own waits between its retries of a listing or a read are recorded in
    `hub.hf_sleeps`, not slept."""
    hf_sleeps: list[float] = []
    monkeypatch.setattr(hf_http, "time", SimpleNamespace(sleep=hf_sleeps.append))
    for server in serve(monkeypatch, TOKEN, check_token=True):
        server.repos[REPO] = Repo(REPO, "dataset", False)
        server.hf_sleeps = hf_sleeps  # type: ignore[attr-defined]
        yield server


def _sink(hub: FakeHub, prefix: str = "runs", **options: Any) -> Sink:
    # huggingface_hub reads HF_ENDPOINT once, at import: in this process the endpoint is an option
    # (the end-to-end test below gives HF_ENDPOINT to a process of its own).
    settings = {"retries": 2, "backoff_s": 0.0, **options}
    return Sink(f"hf://datasets/{REPO}/{prefix}", storage_options={"endpoint": hub.endpoint}, **settings)


def _failure(call: Callable[[], Any]) -> SinkError:
    with pytest.raises(SinkError) as caught:
        call()
    return caught.value


# ---------------------------------------------------------------------------------- operations


def test_put_get_list_delete(hub: FakeHub):
    sink = _sink(hub)
    basic_operations(sink)  # the same operations as on S3 and a directory
    assert sink.list("r1/run.json") == []
    # in the repository below the prefix, one commit per write
    files = hub.repos[REPO].files
    assert files == {
        "runs/r1/run.json": b"replaced",
        "runs/r1/cells/b.json": b"b",
        "runs/r10/run.json": b"other run",
    }
    assert len(hub.commits(REPO)) == 6
    assert {"repo_info", "tree", "resolve", "preupload", "commit"} == set(hub.endpoints_called())


def test_a_long_listing_is_read_page_by_page(hub: FakeHub):
    sink = _sink(hub)
    names = [f"cells/{d}/{i}.json" for d in ("a", "b", "c") for i in range(7)] + ["run.json"]
    for name in names:
        hub.repos[REPO].files[f"runs/r/{name}"] = name.encode()
    hub.page_size = 3  # 22 files and 4 folders: pages enough for HfFileSystem to split its listing
    assert sink.list("r") == sorted(names)
    assert sink.list("r/cells/b") == [f"{i}.json" for i in range(7)]
    assert any("cursor" in r.query for r in hub.calls("tree"))


def test_a_file_is_read_with_its_range_and_revision(hub: FakeHub):
    """What HfFileSystem's buffered reads ask for: a part of a file, at a commit."""
    sink = _sink(hub)
    sink.put("r/run.json", b"0123456789")
    old = hub.repos[REPO].sha
    sink.put("r/run.json", b"abcdefghij")
    with sink._fs.open(f"datasets/{REPO}/runs/r/run.json", "rb", block_size=4) as f:
        f.seek(3)
        assert f.read(4) == b"defg"
    assert any(r.headers.get("range") for r in hub.calls("resolve"))
    with sink._fs.open(f"datasets/{REPO}@{old}/runs/r/run.json", "rb") as f:
        assert f.read() == b"0123456789"
    assert sink._fs.info(f"datasets/{REPO}/runs/r", refresh=True)["type"] == "directory"
    assert sink._fs.info(f"datasets/{REPO}/runs/r/run.json", refresh=True)["size"] == 10


def test_create_is_exclusive(hub: FakeHub):
    sink = _sink(hub)
    assert sink.create("r1/lease/00000001.json", b"first") is True
    assert sink.create("r1/lease/00000001.json", b"second") is False
    assert sink.get("r1/lease/00000001.json") == b"first"
    (commit,) = hub.commits(REPO)
    assert list(commit["files"]) == ["runs/r1/lease/00000001.json"]


def test_of_two_racing_creates_exactly_one_wins(hub: FakeHub):
    sink = _sink(hub)
    for n in range(4):
        rel = f"race/{n}.json"
        won = race([lambda rel=rel: sink.create(rel, b"A"), lambda rel=rel: sink.create(rel, b"B")])
        assert sorted(won) == [False, True]
        assert sink.get(rel) == (b"A" if won[0] else b"B")


def test_a_create_that_lost_a_race_to_another_commit_tries_on_the_new_head(hub: FakeHub):
    sink = _sink(hub, retries=0)
    sink.put("r/run.json", b"run")
    hub.fail(412, times=1, endpoints="commit", body={"error": "A commit has happened since."})
    assert sink.create("r/lease/00000001.json", b"mine") is True
    commits = hub.calls("commit")
    assert [c.status for c in commits[-2:]] == [412, 200]
    # each try names the head it found the file absent in
    parents = [json.loads(c.body.splitlines()[0])["value"]["parentCommit"] for c in commits[-2:]]
    assert parents[0] == parents[1] == hub.commits(REPO)[0]["oid"]


def test_a_create_whose_check_fails_never_overwrites(hub: FakeHub):
    """fsspec's create checks exists(), which is False for any failure: a listing that failed made
    it overwrite another machine's lease."""
    sink = _sink(hub, retries=1)
    assert sink.create("r/lease/00000001.json", b"A's") is True
    hub.fail(503, times=12, endpoints="tree")  # two tries of a listing, with huggingface_hub's retries
    hub.fail(503, times=2, endpoints="paths_info")
    err = _failure(lambda: sink.create("r/lease/00000001.json", b"B's"))
    assert err.transient and err.attempts == 2
    assert hub.repos[REPO].files["runs/r/lease/00000001.json"] == b"A's"
    assert len(hub.commits(REPO)) == 1


def test_a_subprocess_reads_the_endpoint_from_hf_endpoint(hub: FakeHub, tmp_path: Path):
    _sink(hub).put("r/run.json", b"from the parent")
    code = (
        "import sys; from bench.run.sink import Sink; "
        f"sys.stdout.write(Sink('hf://datasets/{REPO}/runs').get('r/run.json').decode())"
    )
    env = clean_env(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_TOKEN=TOKEN, NO_PROXY="127.0.0.1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "from the parent"


# ---------------------------------------------------------------------------- failures, retries


def test_a_hub_that_fails_for_a_while_is_retried(hub: FakeHub):
    sink = _sink(hub, retries=3, backoff_s=0.01)
    hub.fail(503, times=2, endpoints="commit")
    sink.put("r/run.json", b"x")  # our retries: the commit is not retried by huggingface_hub
    assert [c.status for c in hub.calls("commit")] == [503, 503, 200]
    hub.fail(502, times=2, endpoints="tree", body="<html>502 Bad Gateway</html>")
    assert sink.list("r") == ["run.json"]  # huggingface_hub's own retries of a listing
    assert hub.hf_sleeps == [1, 2]  # type: ignore[attr-defined]
    hub.fail(429, times=1, endpoints="repo_info")
    assert sink.get("r/run.json") == b"x"
    hub.fail(412, times=1, endpoints="commit", body={"error": "A commit has happened since."})
    sink.put("r/summary.jsonl", b"{}\n")  # a race with another commit: tried again
    assert hub.repos[REPO].files["runs/r/summary.jsonl"] == b"{}\n"


def test_a_hub_that_keeps_failing_gives_up_after_the_retries(hub: FakeHub):
    sink = _sink(hub, retries=2)
    hub.fail(503, endpoints=("repo_info", "commit"))
    for call in (lambda: sink.put("r/x", b"x"), lambda: sink.get("r/x"), lambda: sink.list("r")):
        start = time.monotonic()
        err = _failure(call)
        assert time.monotonic() - start < 5
        assert err.transient and err.attempts == 3 and "after 3 attempts" in str(err)
        assert err.url == f"hf://datasets/{REPO}/runs"


def test_a_hub_that_is_down_fails_fast(hub: FakeHub):
    """Each operation starts with the repository's info, which huggingface_hub does not retry: a
    refused connection costs the sink's tries only, not huggingface_hub's waits of a listing."""
    with FakeHub() as gone:
        endpoint = gone.endpoint
    sink = Sink(f"hf://datasets/{REPO}/runs", storage_options={"endpoint": endpoint}, retries=2, backoff_s=0)
    for call in (lambda: sink.list("r"), lambda: sink.get("r/x"), lambda: sink.create("r/x", b"x")):
        start = time.monotonic()
        err = _failure(call)
        assert err.transient and err.attempts == 3 and "ConnectError" in err.reason
        assert time.monotonic() - start < 5
    assert hub.hf_sleeps == []  # type: ignore[attr-defined]


def test_a_failure_that_is_not_transient_is_not_retried(hub: FakeHub):
    sink = _sink(hub)
    hub.fail(403, endpoints="commit", body={"error": "You don't have the rights to write here"})
    err = _failure(lambda: sink.put("r/run.json", b"x"))
    assert not err.transient and err.attempts == 1 and "not retried" in str(err)
    assert len(hub.calls("commit")) == 1


def test_a_repository_that_does_not_exist_is_no_missing_file(hub: FakeHub):
    sink = Sink("hf://datasets/bench-org/no-such-repo/runs", storage_options={"endpoint": hub.endpoint})
    for call in (lambda: sink.get("r/run.json"), lambda: sink.list("r"), lambda: sink.put("r/x", b"x")):
        err = _failure(call)
        assert not err.transient and "repository not found" in err.reason.lower()


def test_no_token_appears_in_a_sink_error_or_its_log(hub: FakeHub, caplog: pytest.LogCaptureFixture):
    sink = _sink(hub, retries=1)
    echo = {"error": f"bad request: Authorization: Bearer {TOKEN} (token {TOKEN})"}
    hub.fail(500, endpoints="commit", body=echo)
    with caplog.at_level(logging.DEBUG):
        err = _failure(lambda: sink.put("r/run.json", b"x"))
    assert err.transient and "bad request" in err.reason
    for text in (str(err), err.reason, repr(err.args), caplog.text):
        assert TOKEN not in text
    assert "[REDACTED]" in str(err)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.calls())  # it was used


# ------------------------------------------------------------------------------------- leases


def test_lease_acquire_refuse_take_over_renew_release(hub: FakeHub):
    sink = _sink(hub)
    t0 = 1_000_000.0
    a = acquire_lease(sink, "run1", "A", 60, now=t0)
    assert (a.held, a.owner, a.acquired_at, a.expires_at, a.generation) == (True, "A", t0, t0 + 60, 1)
    b = acquire_lease(sink, "run1", "B", 60, now=t0 + 10)
    assert (b.held, b.owner, b.expires_at) == (False, "A", t0 + 60)
    renewed = renew_lease(sink, "run1", "A", 60, now=t0 + 30)
    assert renewed.held and renewed.acquired_at == t0 and renewed.expires_at == t0 + 90
    b = acquire_lease(sink, "run1", "B", 60, now=t0 + 91)  # A stopped renewing: taken over
    assert (b.held, b.owner, b.acquired_at, b.expires_at) == (True, "B", t0 + 91, t0 + 151)
    lost = renew_lease(sink, "run1", "A", 60, now=t0 + 92)
    assert (lost.held, lost.owner) == (False, "B")
    released = release_lease(sink, "run1", "B", now=t0 + 100)
    assert released.released and not released.held
    c = acquire_lease(sink, "run1", "C", 60, now=t0 + 101)
    assert c.held and c.owner == "C" and c.generation == 5
    # older generations pruned: a delete commit each
    assert sink.list("run1/lease") == [f"{n:08d}.json" for n in range(c.generation - 2, c.generation + 1)]
    assert len(sink.list("run1/lease")) == KEEP_GENERATIONS
    record = json.loads(hub.repos[REPO].files["runs/run1/lease/00000005.json"])
    assert record["owner"] == "C" and record["generation"] == 5


def test_of_two_machines_racing_for_a_lease_one_gets_it(hub: FakeHub):
    sink = _sink(hub)
    for run in ("r1", "r2"):
        states = race([lambda run=run, o=o: acquire_lease(sink, run, o, 60) for o in ("A", "B")])
        assert sorted(s.held for s in states) == [False, True]
        winner = next(s.owner for s in states if s.held)
        assert all(s.owner == winner for s in states)


# --------------------------------------------------------------------------------- end to end


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def test_a_run_synced_to_the_hub_end_to_end(tmp_path: Path):
    config = write_config(tmp_path, attn_implementation=["eager", "sdpa"])
    with FakeHub(token=TOKEN) as hub:
        hub.repos[REPO] = Repo(REPO, "dataset", False)
        env = {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_OFFLINE": "0",
            "HF_TOKEN": TOKEN,
            "NO_PROXY": "127.0.0.1,localhost",
            "TFBENCH_SYNC_TO": f"hf://datasets/{REPO}/runs",
            "TFBENCH_RUN_ID": "on-the-hub",
        }
        proc = run_entrypoint(config, tmp_path / "out", env=env)
        assert proc.returncode == 0, proc.stderr
        files = dict(hub.repos[REPO].files)
        synced = {n[len("runs/") :]: d for n, d in files.items() if "/lease/" not in n}
        local = _tree(tmp_path / "out")
        assert synced == local  # every file, byte for byte
        assert {"on-the-hub/run.json", "on-the-hub/summary.jsonl"} <= set(synced)
        assert len([n for n in synced if n.startswith("on-the-hub/cells/")]) == 2
        leases = sorted(n for n in files if "/lease/" in n)
        assert leases and json.loads(files[leases[-1]])["released"] is True
        everything = proc.stdout + proc.stderr + b"".join(files.values()).decode(errors="replace")
        assert TOKEN not in everything

        # The machine is gone with its disk; the same command on a new one. The sink holds the
        # run, finished: it is brought back (a named run is restored whatever its state), found
        # finished, and nothing is measured again.
        again = run_entrypoint(config, tmp_path / "out2", env=env)
        assert again.returncode == 0, again.stderr
        assert "restored run on-the-hub" in again.stderr and "already finished" in again.stderr
        assert _tree(tmp_path / "out2") == local
        after = {n[len("runs/") :]: d for n, d in hub.repos[REPO].files.items() if "/lease/" not in n}
        assert after == synced
        leases = sorted(n for n in hub.repos[REPO].files if "/lease/" in n)
        assert json.loads(hub.repos[REPO].files[leases[-1]])["released"] is True
