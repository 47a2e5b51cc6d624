"""Every Hub request has a connect and a read timeout (bench.hub.http): a Hub that accepts the
connection and never answers ends a push in PushError (exit 3) after the retries, and a read
(`history --repo`, `compare hub:`) in a usage error (exit 2), in bounded time, never a hang.

The Hub that hangs is tests/hub_server.SilentHub; the timeouts are 1 s here."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http
from huggingface_hub.utils import close_session, get_session, set_client_factory

from bench.cli import main
from bench.config.sources import read_env
from bench.errors import EXIT_PUSH_FAILED, EXIT_USAGE, ConfigError, UserError
from bench.hub import http, pull
from bench.hub import push as hub
from bench.output import history_command
from tests.conftest import ROOT, clean_env
from tests.hub.test_push import make_run
from tests.hub_server import SilentHub

TOKEN = "hf_DummyTimeoutTestToken0123456789"
REPO = "org/name"
# How long a command against a Hub that hangs may take, start-up included (about 3 to 8 s here).
BOUND_S = 30.0
FAST = {http.CONNECT_ENV: "1", http.READ_ENV: "1"}


@pytest.fixture
def silent_hub(monkeypatch: pytest.MonkeyPatch):
    """A Hub that hangs, for in-process requests: online, no proxy, 1 s timeouts."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    close_session()
    with SilentHub() as server:
        yield server
    _restore_default_client()


def _restore_default_client() -> None:
    set_client_factory(hf_http.default_client_factory)
    http._installed = None


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "out", "20261129T023324Z-cpu-demo")


# ---------------------------------------------------------------------------------------------
# The two variables


def test_defaults_and_values() -> None:
    assert http.hub_timeouts({}) == http.Timeouts(connect=10.0, read=60.0)
    assert http.hub_timeouts({http.CONNECT_ENV: " 2.5 ", http.READ_ENV: "30"}) == http.Timeouts(2.5, 30.0)
    assert http.hub_timeouts({http.CONNECT_ENV: "", http.READ_ENV: "  "}) == http.Timeouts(10.0, 60.0)
    assert http.Timeouts(2.0, 5.0).limits() == {"connect": 2.0, "read": 5.0, "write": 5.0, "pool": 5.0}


@pytest.mark.parametrize("name", [http.CONNECT_ENV, http.READ_ENV])
@pytest.mark.parametrize("value", ["0", "-1", "abc", "10s", "nan", "inf", "3601"])
def test_bad_values_are_usage_errors_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(UserError) as info:
        http.hub_timeouts({name: value})
    message = str(info.value)
    assert info.value.exit_code == EXIT_USAGE
    assert name in message and repr(value) in message
    assert "allowed: a number of seconds greater than 0 and at most 3600" in message


def test_a_bad_value_stops_a_push_before_it_starts() -> None:
    with pytest.raises(UserError, match=http.READ_ENV):
        hub.check_push_config(REPO, environ={"HF_TOKEN": TOKEN, http.READ_ENV: "never"})


def test_bad_values_exit_2_from_the_cli(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv(http.READ_ENV, "never")
    assert main(["push", str(run_dir), "--repo", REPO]) == EXIT_USAGE
    assert f"{http.READ_ENV} = 'never'" in capsys.readouterr().err
    monkeypatch.delenv(http.READ_ENV)
    monkeypatch.setenv(http.CONNECT_ENV, "0")
    assert main(["history", "--repo", REPO, "--metric", "tpot", "--cell", "x"]) == EXIT_USAGE
    assert f"{http.CONNECT_ENV} = '0'" in capsys.readouterr().err
    assert main(["compare", f"hub:{REPO}@abcdef1", str(run_dir)]) == EXIT_USAGE
    assert f"{http.CONNECT_ENV} = '0'" in capsys.readouterr().err


def test_the_variables_are_known_to_the_config_check() -> None:
    assert read_env({http.CONNECT_ENV: "1", http.READ_ENV: "2"}) == {}
    with pytest.raises(ConfigError, match=f"did you mean '{http.READ_ENV}'"):
        read_env({"TFBENCH_HUB_READ_TIMEOUT": "2"})


# ---------------------------------------------------------------------------------------------
# Every request is capped


def test_the_shared_client_caps_every_request() -> None:
    try:
        http.use_timeouts({http.CONNECT_ENV: "2", http.READ_ENV: "3"})
        client = get_session()
        assert client.timeout == httpx2.Timeout(connect=2.0, read=3.0, write=3.0, pool=3.0)
        hooks = client.event_hooks["request"]
        assert hf_http.hf_request_event_hook in hooks  # huggingface_hub's own hook is kept
        cap = hooks[-1]
        cases = [
            (None, {"connect": 2.0, "read": 3.0, "write": 3.0, "pool": 3.0}),  # HfApi.dataset_info
            (60, {"connect": 2.0, "read": 3.0, "write": 3.0, "pool": 3.0}),  # hf_hub_download's retry
            (1.5, {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}),  # a shorter limit is kept
        ]
        for asked, expected in cases:
            request = client.build_request("GET", "http://127.0.0.1/x", timeout=asked)
            cap(request)
            assert request.extensions["timeout"] == expected, asked
        request = client.build_request("GET", "http://127.0.0.1/x")  # the client's default
        cap(request)
        assert request.extensions["timeout"] == {"connect": 2.0, "read": 3.0, "write": 3.0, "pool": 3.0}
        # The same values again: the shared client is kept, not rebuilt.
        http.use_timeouts({http.CONNECT_ENV: "2", http.READ_ENV: "3"})
        assert get_session() is client
    finally:
        _restore_default_client()


def test_a_timeout_is_described_with_its_limit_and_variable() -> None:
    request = httpx2.Request("GET", "http://127.0.0.1/x", extensions={"timeout": {"connect": 4.0, "read": 7}})
    connect = httpx2.ConnectTimeout("timed out", request=request)
    assert (
        http.describe_timeout(connect)
        == f"the Hub did not accept a connection within 4 s ({http.CONNECT_ENV})"
    )
    read = httpx2.ReadTimeout("timed out", request=request)
    assert http.describe_timeout(read, "X") == f"X did not answer within 7 s ({http.READ_ENV})"
    try:
        try:
            raise read
        except httpx2.ReadTimeout as exc:
            raise OSError("wrapped") from exc
    except OSError as wrapped:
        assert http.describe_timeout(wrapped) == f"the Hub did not answer within 7 s ({http.READ_ENV})"
    assert http.describe_timeout(httpx2.ConnectError("refused")) is None
    assert http.transient(httpx2.ConnectError("refused")) and not http.transient(ValueError("x"))


def test_dataset_info_and_hf_hub_download_give_up(silent_hub: SilentHub, tmp_path: Path, monkeypatch) -> None:
    """dataset_info passes timeout=None and hf_hub_download retries with 60 s: both end within 1 s
    per request (hf_hub_download's own waits between its retries are skipped here)."""
    from huggingface_hub import HfApi, hf_hub_download

    http.use_timeouts()
    start = time.monotonic()
    with pytest.raises(httpx2.ReadTimeout):
        HfApi(endpoint=silent_hub.endpoint, token=False).dataset_info(REPO)
    assert time.monotonic() - start < 5
    monkeypatch.setattr(hf_http, "time", SimpleNamespace(sleep=lambda s: None))
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        hf_hub_download(
            REPO,
            "x.jsonl",
            repo_type="dataset",
            endpoint=silent_hub.endpoint,
            token=False,
            cache_dir=tmp_path,
        )
    elapsed = time.monotonic() - start
    assert http.describe_timeout(info.value) == f"the Hub did not answer within 1 s ({http.READ_ENV})"
    assert elapsed < 15, elapsed  # one HEAD, then 6 tries of huggingface_hub's retry, 1 s each


# ---------------------------------------------------------------------------------------------
# Push and read against a Hub that hangs, in process


def test_a_push_retries_a_timeout_then_fails(silent_hub: SilentHub, run_dir: Path, monkeypatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(hub, "_sleep", sleeps.append)
    start = time.monotonic()
    with pytest.raises(hub.PushError) as info:
        hub.push_run(run_dir, REPO, endpoint=silent_hub.endpoint, retries=2, backoff=0.5)
    assert time.monotonic() - start < 10
    error = info.value
    assert error.status is None and error.retryable and error.attempts == 3 and len(sleeps) == 2
    message = str(error)
    assert f"no HTTP answer from {silent_hub.endpoint} after 3 attempts" in message
    assert f"the Hub did not answer within 1 s ({http.READ_ENV})" in message
    assert f"tfbench push {run_dir} --repo {REPO}" in message and TOKEN not in message
    assert silent_hub.accepted() == 3  # create_repo, once per attempt


def test_a_read_retries_the_listing_then_is_a_usage_error(
    silent_hub: SilentHub, tmp_path: Path, monkeypatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(http, "_sleep", sleeps.append)
    with pytest.raises(UserError) as info:
        history_command.load_hub(REPO, "tpot", "x", endpoint=silent_hub.endpoint, cache_dir=tmp_path)
    assert str(info.value) == (
        f"cannot read the history from the Hub dataset {REPO}: the Hub at {silent_hub.endpoint} "
        f"did not answer within 1 s ({http.READ_ENV})"
    )
    assert sleeps == [1.0, 2.0] and silent_hub.accepted() == 3
    with pytest.raises(UserError, match=f"run 'abcdef1'.*{silent_hub.endpoint} did not answer within 1 s"):
        pull.load_hub_run(REPO, "abcdef1", endpoint=silent_hub.endpoint, cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# The commands, as a user runs them

# `tfbench push` with its retry waits shortened: the default backoff (2 s, doubling, 5 retries)
# alone would wait 31 to 62 s; everything else is the command as it is.
PUSH_WITH_SHORT_WAITS = (
    "import sys, time; import bench.hub.push as p; p._sleep = lambda s: time.sleep(min(s, 0.2)); "
    "from bench.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _tfbench(
    hub_: SilentHub, tmp_path: Path, *args: str, code: str | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = clean_env(
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT=hub_.endpoint,
        HF_TOKEN=TOKEN,
        HF_HOME=str(tmp_path / "hf"),
        NO_PROXY="127.0.0.1,localhost",
        **FAST,
    )
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "bench.cli", *args]
    start = time.monotonic()
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    print(f"\n{args[0]} against a Hub that hangs: exit {proc.returncode} after {elapsed:.1f} s")
    return proc, elapsed


def test_tfbench_push_exits_3_in_bounded_time(tmp_path: Path, run_dir: Path) -> None:
    with SilentHub() as silent:
        proc, elapsed = _tfbench(
            silent, tmp_path, "push", str(run_dir), "--repo", REPO, code=PUSH_WITH_SHORT_WAITS
        )
    assert proc.returncode == EXIT_PUSH_FAILED, proc.stderr
    assert elapsed < BOUND_S
    assert f"the Hub did not answer within 1 s ({http.READ_ENV})" in proc.stderr
    assert "after 6 attempts" in proc.stderr and f"tfbench push {run_dir} --repo {REPO}" in proc.stderr
    assert "Traceback" not in proc.stderr and TOKEN not in proc.stderr + proc.stdout


def test_tfbench_history_exits_2_in_bounded_time(tmp_path: Path) -> None:
    with SilentHub() as silent:
        proc, elapsed = _tfbench(
            silent, tmp_path, "history", "--repo", REPO, "--metric", "tpot", "--cell", "x"
        )
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert elapsed < BOUND_S
    assert f"the Hub at {silent.endpoint} did not answer within 1 s ({http.READ_ENV})" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tfbench_compare_hub_exits_2_in_bounded_time(tmp_path: Path, run_dir: Path) -> None:
    with SilentHub() as silent:
        proc, elapsed = _tfbench(silent, tmp_path, "compare", f"hub:{REPO}@abcdef1", str(run_dir))
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert elapsed < BOUND_S
    assert f"the Hub at {silent.endpoint} did not answer within 1 s ({http.READ_ENV})" in proc.stderr
    assert "Traceback" not in proc.stderr
