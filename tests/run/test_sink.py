"""The durable sink (bench.run.sink) against a real S3 server (moto, tests/s3_server.py) and a
directory: its operations, exclusive creates under a race, retries and timeouts of a sink that is
down or hangs, the URLs a person may give, leases, and no credential in any message."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.errors import EXIT_USAGE, UserError
from bench.run.sink import (
    KEEP_GENERATIONS,
    Sink,
    SinkError,
    acquire_lease,
    check_sink_url,
    is_transient,
    release_lease,
    renew_lease,
)
from tests.conftest import ROOT, race
from tests.hub_server import SilentHub
from tests.s3_server import ENV, REMOVED, S3Server, serve

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # shaped like an AWS secret access key

# Small enough that a dead sink fails within a second or two.
FAST = {"timeout_s": 0.5, "retries": 2, "backoff_s": 0.05}


@pytest.fixture(scope="module")
def shared_s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, shared_s3: S3Server) -> Iterator[S3Server]:
    """A fresh bucket in the module's server, the environment pointed at it."""
    yield from serve(monkeypatch, shared_s3)


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A server of the test's own, to stop and start."""
    yield from serve(monkeypatch)


@pytest.fixture(params=["s3", "file"])
def sink(request: pytest.FixtureRequest, tmp_path) -> Sink:
    if request.param == "s3":
        server = request.getfixturevalue("s3")
        return Sink(server.url("runs"), **FAST)
    return Sink(f"file://{tmp_path}/sink", **FAST)


# ---------------------------------------------------------------------------------- operations


def basic_operations(sink: Sink) -> None:
    """put, get, list and delete on an empty sink (every kind of sink goes through this)."""
    assert sink.get("r1/run.json") is None
    assert sink.list("r1") == [] and sink.list("") == []
    sink.put("r1/run.json", b'{"a": 1}')
    sink.put("r1/cells/b.json", b"b")
    sink.put("r1/cells/a.json", b"a")
    sink.put("r10/run.json", b"other run")  # shares a prefix of characters, not of directories
    assert sink.get("r1/run.json") == b'{"a": 1}'
    assert sink.list("r1") == ["cells/a.json", "cells/b.json", "run.json"]
    assert sink.list("r1/cells") == ["a.json", "b.json"]
    assert sink.list("") == ["r1/cells/a.json", "r1/cells/b.json", "r1/run.json", "r10/run.json"]
    sink.put("r1/run.json", b"replaced")
    assert sink.get("r1/run.json") == b"replaced"
    sink.delete("r1/cells/a.json")
    sink.delete("r1/cells/a.json")  # absent: nothing to do
    sink.delete("r1/never/there.json")
    assert sink.get("r1/cells/a.json") is None and sink.get("r1/nothing/x.json") is None
    assert sink.list("r1/cells") == ["b.json"]
    assert sink.list("r1/nothing") == []


def test_put_get_list_delete(sink: Sink):
    basic_operations(sink)


def test_create_is_exclusive(sink: Sink):
    assert sink.create("r1/lease/00000001.json", b"first") is True
    assert sink.create("r1/lease/00000001.json", b"second") is False
    assert sink.get("r1/lease/00000001.json") == b"first"


def test_of_two_racing_creates_exactly_one_wins(sink: Sink):
    for n in range(4):
        rel = f"race/{n}.json"
        won = race([lambda rel=rel: sink.create(rel, b"A"), lambda rel=rel: sink.create(rel, b"B")])
        assert sorted(won) == [False, True]
        assert sink.get(rel) == (b"A" if won[0] else b"B")


def test_relative_names_are_checked(sink: Sink):
    for rel in ("", "/abs", "a//b", "a/../b", "./a", "a\\b"):
        with pytest.raises(ValueError, match="not a relative name"):
            sink.get(rel)


def test_a_directory_sink_leaves_no_temporary_files_and_lists_none(tmp_path):
    sink = Sink(f"file://{tmp_path}/sink")
    sink.put("r/a.json", b"a")
    sink.put("r/a.json", b"a2")
    assert sink.create("r/c.json", b"c") and not sink.create("r/c.json", b"d")
    (tmp_path / "sink" / "r" / ".b.json.sink-tmp-0123").write_bytes(b"half")  # a put in flight
    assert sink.list("r") == ["a.json", "c.json"]
    names = sorted(p.name for p in (tmp_path / "sink" / "r").iterdir())
    assert names == [".b.json.sink-tmp-0123", "a.json", "c.json"]  # none left by the puts and creates


def test_a_subprocess_is_pointed_at_the_server_by_its_environment(s3: S3Server):
    Sink(s3.url("runs")).put("r/run.json", b"from the parent")
    code = (
        "import sys; from bench.run.sink import Sink; "
        f"sys.stdout.write(Sink({s3.url('runs')!r}).get('r/run.json').decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=s3.subprocess_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "from the parent"


# ---------------------------------------------------------------------------- failures, retries


def test_a_stopped_server_fails_after_retries_then_works_again(own_s3: S3Server):
    s3 = own_s3
    sink = Sink(s3.url("runs"), **FAST)
    sink.put("r/run.json", b"kept")
    s3.stop()
    for call in (lambda: sink.get("r/run.json"), lambda: sink.put("r/x", b"x"), lambda: sink.list("r")):
        start = time.monotonic()
        with pytest.raises(SinkError) as caught:
            call()
        assert time.monotonic() - start < 3
        err = caught.value
        assert err.transient and err.attempts == 3
        assert err.url == s3.url("runs") and "after 3 attempts" in str(err)
    assert "get r/run.json" in str(_failure(lambda: sink.get("r/run.json")))
    s3.start()
    assert sink.get("r/run.json") == b"kept"
    assert sink.create("r/lease/00000001.json", b"1") is True


def _failure(call: Callable[[], Any]) -> SinkError:
    with pytest.raises(SinkError) as caught:
        call()
    return caught.value


def test_a_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch):
    with SilentHub() as silent:
        for name in REMOVED:
            monkeypatch.delenv(name, raising=False)
        for name, value in {**ENV, "AWS_ENDPOINT_URL_S3": silent.endpoint}.items():
            monkeypatch.setenv(name, value)
        sink = Sink("s3://bucket/runs", timeout_s=0.3, retries=1, backoff_s=0.0)
        start = time.monotonic()
        err = _failure(lambda: sink.get("r/run.json"))
        elapsed = time.monotonic() - start
    assert err.transient and err.attempts == 2
    assert "Timeout" in err.reason
    assert 0.5 < elapsed < 3  # two tries of 0.3 s each: no retry of botocore's or s3fs's own


def test_a_failure_that_is_not_transient_is_not_retried(s3: S3Server):
    sink = Sink("s3://no-such-bucket-here/runs", **FAST)
    err = _failure(lambda: sink.put("r/run.json", b"x"))
    assert not err.transient and err.attempts == 1 and "not retried" in str(err)


def test_transient_errors_are_retried_with_backoff(tmp_path, monkeypatch):
    from botocore.exceptions import ClientError

    sink = Sink(f"file://{tmp_path}", retries=3, backoff_s=0.01)
    sink.put("a", b"ok")
    real, calls, sleeps = sink._fs.cat_file, [], []
    monkeypatch.setattr(time, "sleep", sleeps.append)

    def flaky(path: str, **kwargs: Any) -> bytes:
        calls.append(path)
        if len(calls) == 1:
            raise ConnectionResetError(104, "Connection reset by peer")
        if len(calls) == 2:
            slow = ClientError(
                {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "Get"
            )
            raise OSError(5, "slow down") from slow  # how s3fs hands botocore's errors on
        return real(path, **kwargs)

    monkeypatch.setattr(sink._fs, "cat_file", flaky)
    assert sink.get("a") == b"ok"
    assert len(calls) == 3 and sleeps == [0.01, 0.02]


@pytest.mark.parametrize(
    "error, transient",
    [
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError("timed out"), True),
        (OSError(113, "No route to host"), True),
        (FileNotFoundError("gone"), False),
        (PermissionError("denied"), False),
        (ValueError("bad"), False),
    ],
)
def test_what_counts_as_transient(error, transient):
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    "code, status, transient",
    [
        ("InternalError", 500, True),
        ("ServiceUnavailable", 503, True),
        ("Throttling", 400, True),
        ("ConditionalRequestConflict", 409, True),
        ("AccessDenied", 403, False),
        ("NoSuchBucket", 404, False),
    ],
)
def test_what_counts_as_transient_from_s3(code, status, transient):
    from botocore.exceptions import ClientError

    error = ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )
    assert is_transient(error) is transient


def test_a_create_whose_answer_was_lost_is_recognized_as_ours(s3: S3Server, monkeypatch):
    sink = Sink(s3.url("runs"), **FAST)
    real = sink._fs.pipe_file
    tries = []

    def answer_lost(path: str, data: bytes, **kwargs: Any) -> None:
        tries.append(path)
        real(path, data, **kwargs)
        if len(tries) == 1:
            raise ConnectionResetError(104, "reset after the server stored it")

    monkeypatch.setattr(sink._fs, "pipe_file", answer_lost)
    assert sink.create("r/lease/00000001.json", b"mine") is True
    assert len(tries) == 2
    assert sink.create("r/lease/00000001.json", b"mine") is False  # a first try that finds it: not ours


def test_no_credential_appears_in_a_sink_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    option_secret = "sas-token-value-0123456789"
    sink = Sink(f"file://{tmp_path}", retries=1, backoff_s=0, storage_options={"sas_token": option_secret})

    def leaky(path: str, **kwargs: Any) -> bytes:
        raise ConnectionResetError(104, f"reset; signed with {SECRET} and {option_secret}")

    monkeypatch.setattr(sink._fs, "cat_file", leaky)
    err = _failure(lambda: sink.get("a"))
    for text in (str(err), err.reason, repr(err.args)):
        assert SECRET not in text and option_secret not in text
    assert "[REDACTED]" in str(err)


# --------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url, normalized",
    [
        ("s3://my-bucket", "s3://my-bucket"),
        ("S3://my-bucket/runs/", "s3://my-bucket/runs"),
        ("s3://my.bucket/a/b=c/d_e", "s3://my.bucket/a/b=c/d_e"),
        ("hf://datasets/org/name", "hf://datasets/org/name"),
        ("hf://datasets/org/name/runs/", "hf://datasets/org/name/runs"),
        ("file:///var/lib/tfbench/sink/", "file:///var/lib/tfbench/sink"),
        ("file://localhost/var/sink", "file:///var/sink"),
    ],
)
def test_sink_urls_accepted(url, normalized):
    assert check_sink_url(url, "sync_to") == normalized


@pytest.mark.parametrize(
    "url, why",
    [
        ("", "empty"),
        ("/var/sink", "not a URL"),
        ("ftp://host/x", "unknown scheme ftp://"),
        ("s3://bucket/a b", "whitespace"),
        ("file://relative/path", "relative path"),
        ("file:relative", "not a URL"),
        ("file:///a/../b", "'..'"),
        ("s3://b", "not an S3 bucket name"),
        ("s3://Bucket/x", "not an S3 bucket name"),
        ("s3://bucket/a//b", "empty"),
        ("s3://bucket/a/../b", "'..'"),
        ("s3://bucket/a::gs://b", "A-Za-z0-9"),
        ("s3://bucket/x?versionId=3", "a query string is not allowed"),
        ("s3://bucket/x#frag", "fragment"),
        ("hf://models/org/name", "dataset repository"),
        ("hf://datasets/org", "dataset repository"),
        ("az://Bad_Container/x", "Azure container"),
    ],
)
def test_sink_urls_refused(url, why):
    with pytest.raises(UserError) as caught:
        check_sink_url(url, "TFBENCH_SYNC_TO")
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE
    assert why in message and message.startswith("TFBENCH_SYNC_TO = ") and "allowed: s3://BUCKET" in message


@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/runs",
        "s3://user:hunter2-password@bucket/runs",
        "s3://user@bucket/runs",
        "gs://user:hunter2-password@bucket",
        "abfs://container:hunter2-password@account.dfs.core.windows.net/runs",
        "s3://bucket/runs?X-Amz-Signature=0123abcd&X-Amz-Credential=hunter2-password",
        "az://container/runs?sv=2024&sig=hunter2-password",
        "hf://datasets/org/name/hf_abcdefghijklmnopqrstuvwxyz0123456789",
    ],
)
def test_sink_urls_with_credentials_are_refused_without_echoing_them(url):
    with pytest.raises(UserError) as caught:
        check_sink_url(url, "sync_to")
    message = str(caught.value)
    assert "must not carry credentials" in message and "AWS_* variables or an instance role" in message
    for secret in (SECRET, "hunter2-password", "hf_abcdefghijklmnopqrstuvwxyz0123456789"):
        assert secret not in message


def test_an_azure_account_is_no_credential():
    pytest.importorskip("adlfs")
    url = "abfs://container@account.dfs.core.windows.net/runs"
    assert check_sink_url(url, "sync_to") == url


@pytest.mark.parametrize("url, package", [("gs://bucket/runs", "gcsfs"), ("az://container/runs", "adlfs")])
def test_a_scheme_whose_package_is_missing_names_it(url, package, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a)
    )
    with pytest.raises(UserError, match=f"needs the Python package {package}, which is not installed"):
        check_sink_url(url, "sync_to")


def test_the_sink_checks_its_url():
    with pytest.raises(UserError, match="sink URL = 'ftp://x'"):
        Sink("ftp://x")


# ------------------------------------------------------------------------------------- leases


def test_lease_acquire_refuse_expire_renew_release(sink: Sink):
    t0 = 1_000_000.0
    a = acquire_lease(sink, "run1", "A", 60, now=t0)
    assert (a.held, a.owner, a.acquired_at, a.expires_at, a.generation) == (True, "A", t0, t0 + 60, 1)
    b = acquire_lease(sink, "run1", "B", 60, now=t0 + 10)
    assert (b.held, b.owner, b.expires_at) == (False, "A", t0 + 60)
    again = acquire_lease(sink, "run1", "A", 60, now=t0 + 20)  # the same owner (a restart)
    assert again.held and again.acquired_at == t0 and again.expires_at == t0 + 80
    renewed = renew_lease(sink, "run1", "A", 60, now=t0 + 30)
    assert renewed.held and renewed.acquired_at == t0 and renewed.expires_at == t0 + 90
    b = acquire_lease(sink, "run1", "B", 60, now=t0 + 91)  # A stopped renewing: expired
    assert (b.held, b.owner, b.acquired_at, b.expires_at) == (True, "B", t0 + 91, t0 + 151)
    lost = renew_lease(sink, "run1", "A", 60, now=t0 + 92)
    assert (lost.held, lost.owner) == (False, "B")
    assert not release_lease(sink, "run1", "A", now=t0 + 93).released  # not A's to release
    released = release_lease(sink, "run1", "B", now=t0 + 100)
    assert released.released and not released.held
    assert not renew_lease(sink, "run1", "B", 60, now=t0 + 101).held  # released is released
    c = acquire_lease(sink, "run1", "C", 60, now=t0 + 102)  # at once, long before B's expiry
    assert c.held and c.owner == "C"
    assert sink.list("run1/lease") == [f"{n:08d}.json" for n in range(c.generation - 2, c.generation + 1)]


def test_an_expired_lease_nobody_took_is_renewed(sink: Sink):
    acquire_lease(sink, "run1", "A", 10, now=100.0)
    state = renew_lease(sink, "run1", "A", 10, now=200.0)
    assert state.held and state.expires_at == 210.0


def test_old_lease_generations_are_pruned(sink: Sink):
    assert acquire_lease(sink, "r/shards/1", "A", 10, now=0.0).held  # a shard's lease
    for i in range(1, 6):
        assert renew_lease(sink, "r/shards/1", "A", 10, now=float(i)).held
    names = sink.list("r/shards/1/lease")
    assert len(names) == KEEP_GENERATIONS and names[-1] == "00000006.json"


def test_a_damaged_lease_counts_as_expired(sink: Sink):
    sink.put("run1/lease/00000001.json", b"{not json")
    state = acquire_lease(sink, "run1", "A", 60, now=5.0)
    assert state.held and state.generation == 2


def test_of_two_machines_racing_for_a_lease_one_gets_it(s3: S3Server):
    sink = Sink(s3.url("runs"), **FAST)
    for run in ("r1", "r2", "r3"):
        states = race([lambda run=run, o=o: acquire_lease(sink, run, o, 60) for o in ("A", "B")])
        assert sorted(s.held for s in states) == [False, True]
        winner = next(s.owner for s in states if s.held)
        assert all(s.owner == winner for s in states)


def test_lease_arguments_are_checked(sink: Sink):
    for run_id, owner, ttl in (
        ("", "A", 1),
        ("a/../b", "A", 1),
        ("r", "", 1),
        ("r", "A", 0),
        ("r", "A", True),
    ):
        with pytest.raises(ValueError):
            acquire_lease(sink, run_id, owner, ttl)
