"""Pushing benchmark_v2-format results files to a Hub dataset: one commit with both files, the
token from PUSH_TO_HUB_TOKEN only, a dataset that must exist (never created), retries, and no
token in any message. The Hub is tests/hub_server.py's FakeHub, in process."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import close_session

from bench.errors import EXIT_USAGE, UserError
from bench.hub import benchmark_v2_push as v2
from bench.hub.commit import PushConfigError, PushError
from tests.hub_server import FakeHub, Repo

TOKEN = "hf_v2PushTokenThatMustNeverAppear0123"
OTHER = "hf_anHFTokenThatMustNotBeUsedAtAll4567"
REPO = "bench-org/benchmark-v2-results"
LATER = "tfbench v2 ... --run-id nightly"
FULL = "full_results/benchmark_run_20261129_023329.jsonl"
SUMMARIZED = "summarized_results/benchmark_run_20261129_023329.jsonl"
# benchmark_v2's JSONL: ensure_ascii=False, no final newline.
FILES = {
    FULL: '{"benchmark_config_hash": "ab12", "measurements": {"gpu_metrics": [{"é": 1}]}}\n{"x": 2}'.encode(),
    SUMMARIZED: b'{"benchmark_config_hash": "ab12", "measurements": {"gpu_metrics": null}}\n{"x": 2}',
}


class Log:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        self.events.append({"event": event, "level": level, **fields})


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A FakeHub that accepts only TOKEN and holds REPO; online (the suite runs offline); no
    proxy for it; PUSH_TO_HUB_TOKEN set and HF_TOKEN set to another token; retries without sleeping."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("PUSH_TO_HUB_TOKEN", TOKEN)
    monkeypatch.setenv("HF_TOKEN", OTHER)
    sleeps: list[float] = []
    monkeypatch.setattr(v2, "_sleep", sleeps.append)
    close_session()
    with FakeHub(token=TOKEN) as server:
        server.sleeps = sleeps  # type: ignore[attr-defined]
        server.repos[REPO] = Repo(REPO, "dataset", True)
        yield server
    close_session()


def test_both_files_go_in_one_commit_byte_for_byte(hub: FakeHub) -> None:
    result = v2.push_v2_files(REPO, FILES, endpoint=hub.endpoint, later=LATER)
    (commit,) = hub.commits(REPO)
    assert commit["files"] == FILES
    assert commit["summary"] == f"tfbench (benchmark_v2 format): {FULL}, {SUMMARIZED}"
    assert result.files == (FULL, SUMMARIZED) and result.attempts == 1 and hub.sleeps == []
    assert result.commit_oid == commit["oid"] and result.commit_url.startswith(hub.endpoint)
    assert result.repo_url == f"{hub.endpoint}/datasets/{REPO}"
    assert "create_repo" not in hub.endpoints_called()
    # PUSH_TO_HUB_TOKEN, not HF_TOKEN, on every request (the FakeHub refuses any other).
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.calls())


def test_the_token_comes_from_push_to_hub_token_or_the_argument_never_hf_token(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert v2.check_v2_push_config(REPO) == REPO
    for missing in ("", "  "):
        monkeypatch.setenv("PUSH_TO_HUB_TOKEN", missing)  # HF_TOKEN is still set
        with pytest.raises(PushConfigError, match="set PUSH_TO_HUB_TOKEN") as info:
            v2.push_v2_files(REPO, FILES, endpoint=hub.endpoint, later=LATER)
        assert info.value.exit_code == EXIT_USAGE and "never written" in str(info.value)
        with pytest.raises(PushConfigError, match="PUSH_TO_HUB_TOKEN"):
            v2.check_v2_push_config(REPO)
    monkeypatch.delenv("PUSH_TO_HUB_TOKEN")
    with pytest.raises(PushConfigError, match="PUSH_TO_HUB_TOKEN"):
        v2.check_v2_push_config(REPO, environ={"HF_TOKEN": OTHER})
    assert hub.calls() == []  # nothing was sent
    result = v2.push_v2_files(REPO, FILES, token=TOKEN, endpoint=hub.endpoint, later=LATER)
    assert result.attempts == 1 and len(hub.commits(REPO)) == 1


def test_a_dataset_that_does_not_exist_is_a_push_error_and_is_not_created(hub: FakeHub) -> None:
    missing = "bench-org/no-such-dataset"
    with pytest.raises(PushError) as info:
        v2.push_v2_files(missing, FILES, endpoint=hub.endpoint, later=LATER)
    err = info.value
    assert err.status == 404 and not err.retryable and err.attempts == 1 and err.repo_id == missing
    message = str(err)
    assert f"the dataset {missing} does not exist" in message and "never created" in message
    assert f"hf repos create {missing} --repo-type dataset" in message and LATER in message
    assert hub.sleeps == [] and missing not in hub.repos
    assert "create_repo" not in hub.endpoints_called() and TOKEN not in message


def test_transient_failures_are_retried(hub: FakeHub) -> None:
    hub.fail(503, times=2, endpoints="commit")
    log = Log()
    result = v2.push_v2_files(
        REPO, FILES, endpoint=hub.endpoint, retries=3, backoff=1.0, log=log, later=LATER
    )
    assert result.attempts == 3 and len(hub.commits(REPO)) == 1
    assert [r.status for r in hub.calls("commit")] == [503, 503, 200]
    first, second = hub.sleeps
    assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0  # exponential, with jitter
    assert [(e["event"], e["status"], e["attempt"], e["repo"]) for e in log.events] == [
        ("push_retry", 503, 1, REPO),
        ("push_retry", 503, 2, REPO),
    ]


def test_retries_exhausted_raise_a_push_error_without_the_token(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that echoes the credential: it must still not come out. Only the commit fails:
    # huggingface_hub retries a 5xx of the preupload itself, for about 20 s.
    hub.fail(503, endpoints="commit", body={"error": f"overloaded, try later (Bearer {TOKEN})"})
    log = Log()
    with caplog.at_level(logging.DEBUG), pytest.raises(PushError) as info:
        v2.push_v2_files(REPO, FILES, endpoint=hub.endpoint, retries=2, backoff=0, log=log, later=LATER)
    err = info.value
    assert err.status == 503 and err.retryable and err.attempts == 3 and len(hub.sleeps) == 2
    message = str(err)
    assert (
        f"could not push the benchmark_v2 results ({FULL}, {SUMMARIZED}) to the Hub dataset {REPO}" in message
    )
    assert "HTTP 503" in message and "after 3 attempts" in message and message.endswith(LATER)
    assert err.__cause__ is None and err.__suppress_context__
    texts = [message, repr(err), json.dumps(log.events), *(r.getMessage() for r in caplog.records)]
    assert not any(TOKEN in text for text in texts)
    assert hub.commits(REPO) == []


def test_a_refused_token_names_push_to_hub_token(hub: FakeHub) -> None:
    with pytest.raises(PushError) as info:
        v2.push_v2_files(
            REPO, FILES, token="hf_aTokenTheHubRefuses0123456789abc", endpoint=hub.endpoint, later=LATER
        )
    assert info.value.status == 401 and info.value.attempts == 1 and hub.sleeps == []
    assert "PUSH_TO_HUB_TOKEN must be a token with write access" in str(info.value)


def test_a_token_in_a_file_is_not_uploaded(hub: FakeHub) -> None:
    leaky = {**FILES, FULL: FILES[FULL] + f'\n{{"note": "Bearer {TOKEN}"}}'.encode()}
    v2.push_v2_files(REPO, leaky, endpoint=hub.endpoint, later=LATER)
    (commit,) = hub.commits(REPO)
    assert not any(TOKEN.encode() in content for content in commit["files"].values())
    assert commit["files"][SUMMARIZED] == FILES[SUMMARIZED]


def test_offline_mode_is_a_config_error(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushConfigError, match="HF_HUB_OFFLINE"):
        v2.check_v2_push_config(REPO)
    with pytest.raises(PushConfigError, match="HF_HUB_OFFLINE") as info:
        v2.push_v2_files(REPO, FILES, endpoint=hub.endpoint, later=LATER)
    assert LATER in str(info.value)
    assert hub.calls() == []


def test_check_names_the_flag_and_the_timeouts(hub: FakeHub) -> None:
    with pytest.raises(PushConfigError, match="--push-result-to-dataset = 'not a repo'.*ORG/NAME"):
        v2.check_v2_push_config("not a repo")
    with pytest.raises(UserError, match="TFBENCH_HUB_READ_TIMEOUT_S"):
        v2.check_v2_push_config(REPO, environ={"PUSH_TO_HUB_TOKEN": TOKEN, "TFBENCH_HUB_READ_TIMEOUT_S": "0"})
    assert v2.check_v2_push_config(f" {REPO} ", environ={"PUSH_TO_HUB_TOKEN": TOKEN}) == REPO
