"""Pushing results files in transformers' benchmark_v2 format to a Hub dataset, as benchmark_v2
does, with tfbench's timeouts, retries and scrubbing.

benchmark_v2 (docs/compat/benchmark_v2.md, section 7) reads its token from PUSH_TO_HUB_TOKEN,
never creates the dataset (it must exist), and uploads full_results/benchmark_run_<ts>.jsonl,
then summarized_results/benchmark_run_<ts>.jsonl, as two commits. Here the paths, the token
variable and the rule that the dataset is never created are the same, so that a dataset
benchmark_v2 fills can be filled by tfbench and read by the same tools. The difference: both
files go in one commit, so that a reader never finds a full file without its summary, and a push
repeated after a lost answer commits nothing new. HF_TOKEN and a stored `hf auth login` token are
deliberately not used: a machine set up for benchmark_v2 has PUSH_TO_HUB_TOKEN, and picking up
another identity's token would push somewhere nobody asked for.

The retries, the request timeouts and the messages are bench.hub.commit's, as for a tfbench run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from bench import __version__
from bench.hub.commit import (
    CommitResult,
    Failure,
    PushConfigError,
    check_repo_id,
    commit_with_retries,
    offline_mode,
    scrub,
    scrub_files,
)
from bench.hub.http import hub_timeouts, use_timeouts

TOKEN_ENV = "PUSH_TO_HUB_TOKEN"  # benchmark_v2's variable
SOURCE = "--push-result-to-dataset"  # benchmark_v2's flag, named in messages about the repo id


def resolve_v2_token(token: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The explicit token, else PUSH_TO_HUB_TOKEN; never HF_TOKEN nor a stored login."""
    environ = os.environ if environ is None else environ
    value = (token if token else environ.get(TOKEN_ENV, "")).strip()
    if not value:
        raise PushConfigError(
            f"{SOURCE} needs a token with write access to the dataset: set {TOKEN_ENV} (benchmark_v2's "
            f"variable; HF_TOKEN is not used), e.g. `docker run -e {TOKEN_ENV} ...`. "
            "The token is never written to the results or the logs"
        )
    return value


def _offline(repo: str, later: str | None) -> PushConfigError:
    how = f"unset it and push with: {later}" if later else "unset it to push"
    return PushConfigError(
        f"cannot push to the Hub dataset {repo}: HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) "
        f"forbids reaching the Hub; {how}"
    )


def check_v2_push_config(repo_id: Any, environ: Mapping[str, str] | None = None) -> str:
    """Everything a benchmark_v2 push needs that can be checked before a run starts; returns the
    repo id. Whether the dataset exists is not checked: that takes a request, and the push itself
    says so clearly.

    Raises PushConfigError (exit 2) for a malformed repo id, a missing PUSH_TO_HUB_TOKEN or
    HF_HUB_OFFLINE=1, UserError (exit 2) for a bad TFBENCH_HUB_CONNECT_TIMEOUT_S or
    TFBENCH_HUB_READ_TIMEOUT_S.
    """
    repo = check_repo_id(repo_id, SOURCE)
    resolve_v2_token(None, environ)
    hub_timeouts(environ)
    if offline_mode():
        raise _offline(repo, None)
    return repo


def _missing_dataset(repo: str, endpoint: str) -> Callable[[Failure], str | None]:
    def explain(failure: Failure) -> str | None:
        if failure.status != 404:
            return None
        # The Hub answers 404 as well for a private dataset the token may not see.
        return (
            f"HTTP 404 from {endpoint}: the dataset {repo} does not exist, or the token in {TOKEN_ENV} "
            f"cannot see it. As benchmark_v2 does, the dataset is never created: create it first "
            f"(e.g. `hf repos create {repo} --repo-type dataset`)"
        )

    return explain


_sleep: Callable[[float], None] = time.sleep  # tests replace it


def push_v2_files(
    repo_id: str,
    files: Mapping[str, bytes],
    *,
    token: str | None = None,
    endpoint: str | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    environ: Mapping[str, str] | None = None,
    log: Any = None,
    later: str,
) -> CommitResult:
    """Upload `files` (path in the repository -> content) as one commit to an existing dataset.

    The caller passes full_results/benchmark_run_<ts>.jsonl and
    summarized_results/benchmark_run_<ts>.jsonl. `token` defaults to PUSH_TO_HUB_TOKEN;
    `endpoint` to HF_ENDPOINT / huggingface.co. The retries are push_run's: `retries` more tries
    of a transient failure after backoff, 2*backoff, ... seconds (bench.hub.commit). A token or a
    token-shaped string in a file is replaced by [REDACTED] before upload. Raises PushConfigError
    (exit 2) before any request for what a person must fix, PushError when the Hub could not be
    reached, refused the push, or has no such dataset (never created here); its message ends
    with `later`, the command that pushes the same files again.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    environ = os.environ if environ is None else environ
    repo = check_repo_id(repo_id, SOURCE)
    secret = resolve_v2_token(token, environ)
    if not files:
        raise ValueError("push_v2_files: no files to push")
    if offline_mode():
        raise _offline(repo, later)
    use_timeouts(environ)
    content = scrub_files(files, secret)
    names = ", ".join(content)
    summary = scrub(f"tfbench (benchmark_v2 format): {names}", secret)
    description = f"Results in transformers' benchmark_v2 format, written by tfbench {__version__}."
    api = HfApi(endpoint=endpoint, token=secret, library_name="tfbench", library_version=__version__)

    def attempt(attempts: int) -> CommitResult:
        # No create_repo: benchmark_v2 requires the dataset to exist, and so does this push.
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=c) for p, c in content.items()]
        info = api.create_commit(
            repo, operations, commit_message=summary, commit_description=description, repo_type="dataset"
        )
        return CommitResult(
            repo_id=repo,
            repo_url=f"{api.endpoint}/datasets/{repo}",
            commit_url=str(info.commit_url),
            commit_oid=getattr(info, "oid", None),
            files=tuple(content),
            attempts=attempts,
        )

    return commit_with_retries(
        attempt,
        repo_id=repo,
        token=secret,
        endpoint=api.endpoint,
        what=f"the benchmark_v2 results ({names})",
        later=later,
        token_name=TOKEN_ENV,
        retries=retries,
        backoff=backoff,
        log=log,
        sleep=_sleep,  # read at call time: tests replace the module's _sleep
        explain=_missing_dataset(repo, api.endpoint),
    )
