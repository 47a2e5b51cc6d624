"""Pushing a run's results to a Hugging Face Hub dataset repository.

One push is one commit to a dataset repo (created private by default) holding the run's files in
the layout of bench.hub.schema (summarized/<run_id>.jsonl, full/<run_id>.jsonl, runs/<run_id>.json)
and the dataset card of bench.hub.card (README.md), read from the Hub and updated.

The token comes from the `token` argument or the HF_TOKEN environment variable, never from a
stored login, and never appears in a message: every error text is scrubbed of it. Nothing under
the run directory is written. Every request has a connect and a read timeout (bench.hub.http).
Failures that may pass (HTTP 408, 429, 5xx, a timeout, a dropped connection, a gateway's non-JSON
answer) are retried with exponential backoff; the last failure raises PushError, which says how
to push the same results later.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import UserError
from bench.hub.card import render_card
from bench.hub.http import describe_timeout, hub_timeouts, use_timeouts
from bench.hub.schema import CONFIG_FULL, CONFIG_SUMMARIZED, context_row, full_row, plain, summarized_row
from bench.results.records import CellRecord
from bench.results.store import Skipped, open_run
from bench.results.summary import summary_row
from bench.secrets import REDACTED, redact, redact_bytes

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0


# ---------------------------------------------------------------------------------------------
# Errors and results


class PushConfigError(UserError):
    """A push that cannot start: a malformed repo id, no token, the Hub switched off (exit 2)."""


class PushError(Exception):
    """A push that failed after its retries; the message names the repo and says how to push later.

    The local results are untouched. `status` is the last HTTP status (None: no answer).
    """

    def __init__(
        self, message: str, *, repo_id: str, status: int | None, retryable: bool, attempts: int
    ) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.status = status
        self.retryable = retryable
        self.attempts = attempts


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    repo_url: str  # the dataset page, e.g. https://huggingface.co/datasets/ORG/NAME
    commit_url: str
    commit_oid: str | None
    files: tuple[str, ...]  # paths in the repository
    attempts: int  # 1 when the first try went through
    card: str  # "created" (none on the Hub yet), "updated" (prose kept), "generated" (fetch_card=False)


# ---------------------------------------------------------------------------------------------
# Validation

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id: Any, source: str = "--repo") -> str:
    """ORG/NAME of a dataset repository, or PushConfigError saying what is allowed."""
    allowed = "allowed: ORG/NAME (letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters)"
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise PushConfigError(f"{source} = {repo_id!r}: {allowed}")
    value = repo_id.strip()
    hint = ""
    if value.startswith(("http://", "https://", "hf://")) or value.startswith("datasets/"):
        hint = " (give the repository id, not a URL or a path with 'datasets/')"
    parts = value.split("/")
    ok = (
        len(parts) == 2
        and all(_REPO_PART.match(p) for p in parts)
        and len(value) <= 96
        and "--" not in value
        and ".." not in value
        and not value.endswith((".git", ".ipynb"))
        and not parts[1].endswith(("-", "."))
    )
    if ok:
        try:
            from huggingface_hub.utils import validate_repo_id

            validate_repo_id(value)
        except Exception:  # HFValidationError: the library's own rules, stricter than ours
            ok = False
    if not ok:
        raise PushConfigError(f"{source} = {repo_id!r}: {allowed}{hint}")
    return value


def resolve_token(token: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The explicit token, else HF_TOKEN; a stored `hf auth login` token is deliberately not used."""
    environ = os.environ if environ is None else environ
    value = token if token else environ.get("HF_TOKEN", "")
    value = value.strip()
    if not value:
        raise PushConfigError(
            "pushing to the Hub needs a token with write access: set HF_TOKEN "
            "(e.g. `docker run -e HF_TOKEN ...`; the token is never written to the results or the logs)"
        )
    return value


def offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def check_push_config(
    repo_id: Any, token: str | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """Everything a push needs that can be checked before a run starts; returns the repo id.

    Raises PushConfigError (exit 2) for a malformed repo id, a missing HF_TOKEN or HF_HUB_OFFLINE=1,
    UserError (exit 2) for a bad TFBENCH_HUB_CONNECT_TIMEOUT_S or TFBENCH_HUB_READ_TIMEOUT_S.
    """
    repo = check_repo_id(repo_id)
    resolve_token(token, environ)
    hub_timeouts(environ)
    if offline_mode():
        raise PushConfigError(
            f"cannot push to {repo}: HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) forbids reaching the Hub; "
            "unset it to push, or push later with `tfbench push RUN_DIR --repo ORG/NAME`"
        )
    return repo


# ---------------------------------------------------------------------------------------------
# Files


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows).encode()


def _safe_name(run_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", run_id).strip("._") or "run"
    return name[:200]


def load_run(
    run_dir: str | os.PathLike[str],
    skipped: list[Skipped] | None = None,
) -> tuple[dict[str, Any], list[CellRecord], list[dict[str, Any]]]:
    """run.json, the cell records (by cell index) and the summary rows of a run directory.

    A file in cells/ that is not a cell record is left out, never uploaded; it is added to
    `skipped`, as is a summary.jsonl that cannot be read (its rows then come from the records).
    """
    path = Path(run_dir)
    run = open_run(path)
    records, problems = run.records(), list(run.skipped)
    run_id = run.run_id
    summary_path = path / "summary.jsonl"
    summary = None
    if summary_path.is_file():
        try:
            summary = _read_jsonl(summary_path)
        except (OSError, ValueError) as exc:
            problems.append(
                Skipped(summary_path, f"not JSON lines: {exc}; its rows come from the cell records")
            )
    if summary is None:  # a run stopped before its summary: the same rows from the cell records
        summary = [summary_row(run_id, r) for r in records]
    if skipped is not None:
        skipped.extend(problems)
    return run.meta.to_dict(), records, summary


def build_files(
    run_dir: str | os.PathLike[str],
    *,
    existing_card: str | None = None,
    repo_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, bytes]:
    """Path in the repository -> content, for one run. Deterministic: the same run gives the same
    bytes, so a push repeated after a lost answer commits nothing new. Reads only."""
    run, records, summary = load_run(run_dir)
    context = context_row(run, environ)
    run_id = str(context["run_id"] or Path(run_dir).name)
    context["run_id"] = run_id
    name = _safe_name(run_id)
    summarized = [summarized_row(context, row) for row in summary]
    full = [full_row(context, record) for record in records]
    run_json = json.dumps(plain(run), indent=1, sort_keys=False, allow_nan=False, default=str) + "\n"
    return {
        f"{CONFIG_SUMMARIZED}/{name}.jsonl": _jsonl(summarized),
        f"{CONFIG_FULL}/{name}.jsonl": _jsonl(full),
        f"runs/{name}.json": run_json.encode(),
        "README.md": render_card(existing_card, repo_id).encode(),
    }


# ---------------------------------------------------------------------------------------------
# Push


def scrub(text: str, token: str | None) -> str:
    """The text without the token, secret environment values or anything shaped like a token."""
    if token:
        text = text.replace(token, REDACTED)
    return redact(text)


def _scrub_bytes(files: dict[str, bytes], token: str) -> dict[str, bytes]:
    needle = token.encode()
    return {p: redact_bytes(c.replace(needle, REDACTED.encode())) for p, c in files.items()}


@dataclass
class _Failure:
    status: int | None
    retryable: bool
    detail: str
    retry_after: float | None = None


def _classify(exc: BaseException) -> _Failure:
    """What went wrong, and whether trying again may help."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        retry_after = None
        if response is not None:
            raw = response.headers.get("retry-after", "")
            if raw.strip().isdigit():
                retry_after = float(raw.strip())
        server = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
        retryable = status in RETRY_STATUSES or (status is not None and status >= 500)
        return _Failure(status, retryable, server.strip(), retry_after)
    if isinstance(exc, OfflineModeIsEnabled):
        return _Failure(None, False, "HF_HUB_OFFLINE=1 forbids reaching the Hub")
    timeout = describe_timeout(exc)
    if timeout is not None:  # retried like a 5xx
        return _Failure(None, True, timeout)
    if isinstance(exc, httpx2.TransportError):
        return _Failure(None, True, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, json.JSONDecodeError):  # a gateway's HTML error page where JSON was expected
        return _Failure(None, True, "the Hub answered with something that is not JSON (a gateway error?)")
    # e.g. ValueError: the Hub refused the card's metadata; anything else is not worth a retry either
    return _Failure(None, False, f"{type(exc).__name__}: {exc}")


_sleep: Callable[[float], None] = time.sleep  # tests replace it


def _fetch_card(api: Any, repo_id: str, token: str) -> str | None:
    """The README.md on the repo's main branch, or None when there is none."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = f"{api.endpoint}/datasets/{repo_id}/resolve/main/README.md"
    headers = build_hf_headers(token=token, library_name="tfbench", library_version=__version__)
    response = get_session().get(url, headers=headers)
    if response.status_code == 404:
        return None
    hf_raise_for_status(response)
    return response.content.decode("utf-8", errors="replace")


def _commit_message(context: Mapping[str, Any]) -> tuple[str, str]:
    sha = context.get("measured_commit")
    summary = (
        f"tfbench run {context.get('run_id')}: commit {sha[:12] if sha else 'unknown'}, "
        f"tfbench {context.get('tfbench_version')}, {context.get('hardware')}"
    )
    lines = [
        f"run_id: {context.get('run_id')}",
        f"measured_commit: {sha or 'unknown'} ({context.get('measured_commit_source') or 'no source'})",
        f"branch: {context.get('branch') or '-'}",
        f"tfbench: {context.get('tfbench_version')}",
        f"hardware: {context.get('hardware')} on {context.get('hostname')}",
        f"torch: {context.get('torch_version')}, transformers: {context.get('transformers_version')}",
        f"run status: {context.get('run_status')}",
    ]
    return summary, "\n".join(lines)


def push_run(
    run_dir: str | os.PathLike[str],
    repo_id: str,
    token: str | None = None,
    private: bool = True,
    endpoint: str | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    *,
    fetch_card: bool = True,
    environ: Mapping[str, str] | None = None,
    log: Any = None,
    warn: Callable[[Skipped], None] | None = None,
) -> PushResult:
    """Upload one run (both formats, the run's run.json, the card) as one commit to a dataset repo.

    The repo is created if missing (private unless private=False; an existing repo keeps its
    visibility). `token` defaults to HF_TOKEN; `endpoint` to HF_ENDPOINT / huggingface.co.
    Transient failures are tried again `retries` times, after backoff, 2*backoff, 4*backoff, ...
    seconds (at most 60; a Retry-After the Hub sends is honoured), each wait scaled by a random
    factor in [0.5, 1]; a request that timed out (TFBENCH_HUB_CONNECT_TIMEOUT_S,
    TFBENCH_HUB_READ_TIMEOUT_S) counts as transient. The card on the Hub is read and updated
    (fetch_card=False: a generated card replaces it, prose and all). Raises PushConfigError
    (exit 2) before any request for what a person must fix, PushError when the Hub could not be
    reached or refused the push.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    environ = os.environ if environ is None else environ
    repo = check_repo_id(repo_id)
    secret = resolve_token(token, environ)
    path = Path(run_dir)
    later = f"tfbench push {path} --repo {repo}"
    if offline_mode():
        raise PushConfigError(
            f"cannot push run {path.name} to {repo}: HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) forbids "
            f"reaching the Hub. The results stay in {path}; unset it and push with: {later}"
        )
    use_timeouts(environ)
    skipped: list[Skipped] = []
    run, _, _ = load_run(path, skipped)
    for item in skipped if warn is not None else ():
        warn(item)
    context = context_row(run, environ)
    run_id = context["run_id"] or path.name
    summary, description = (scrub(text, secret) for text in _commit_message({**context, "run_id": run_id}))
    # Built once, before any request: the data files do not depend on what the Hub holds.
    files = _scrub_bytes(build_files(path, repo_id=repo, environ=environ), secret)
    api = HfApi(endpoint=endpoint, token=secret, library_name="tfbench", library_version=__version__)
    where = api.endpoint

    attempts = 0
    card_state = "created"
    while True:
        attempts += 1
        try:
            url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            existing = _fetch_card(api, repo, secret) if fetch_card else None
            card_state = "updated" if existing is not None else ("created" if fetch_card else "generated")
            files["README.md"] = scrub(render_card(existing, repo), secret).encode()
            operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=c) for p, c in files.items()]
            info = api.create_commit(
                repo,
                operations,
                commit_message=summary,
                commit_description=description,
                repo_type="dataset",
            )
            return PushResult(
                repo_id=repo,
                repo_url=str(url),
                commit_url=str(info.commit_url),
                commit_oid=getattr(info, "oid", None),
                files=tuple(files),
                attempts=attempts,
                card=card_state,
            )
        except (PushConfigError, PushError):
            raise
        except Exception as exc:
            failure = _classify(exc)
            status = f"HTTP {failure.status}" if failure.status is not None else "no HTTP answer"
            detail = scrub(failure.detail, secret)
            if failure.retryable and attempts <= retries:
                wait = min(MAX_BACKOFF_S, backoff * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
                if failure.retry_after is not None:
                    wait = min(MAX_BACKOFF_S, max(wait, failure.retry_after))
                message = (
                    f"push to {repo} failed ({status}: {detail}); retry {attempts}/{retries} in {wait:.1f} s"
                )
                logger.warning(message)
                if log is not None:
                    fields = {
                        "repo": repo,
                        "status": failure.status,
                        "attempt": attempts,
                        "wait_s": round(wait, 3),
                    }
                    log.emit("push_retry", level="warning", message=message, **fields)
                _sleep(wait)
                continue
            if failure.status in (401, 403):
                why = (
                    f"the Hub refused the token ({status}): HF_TOKEN must be a token with write access "
                    f"to {repo} (a fine-grained token needs write access to the {repo.split('/')[0]} namespace)"
                )
            elif failure.retryable:
                why = f"{status} from {where} after {attempts} attempts: {detail}"
            else:
                why = f"{status} from {where}: {detail}"
            message = (
                f"could not push run {run_id} to the Hub dataset {repo}: {why}. "
                f"The results are unchanged in {path}; push them later with: {later}"
            )
            raise PushError(
                scrub(message, secret),
                repo_id=repo,
                status=failure.status,
                retryable=failure.retryable,
                attempts=attempts,
            ) from None
