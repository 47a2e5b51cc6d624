"""What every push to a Hub dataset shares: its errors, the checks made before any request, the
token kept out of every text and file, and one commit tried until it goes through or fails for good.

Two pushes use it: a tfbench run (bench.hub.push) and results files in transformers' benchmark_v2
format (bench.hub.benchmark_v2_push). Both make one commit per push, so a push is all or nothing
and the same loop serves them: failures that may pass (HTTP 408, 429, 5xx, a timeout, a dropped
connection, a gateway's non-JSON answer) are tried again after an exponential backoff with jitter,
a Retry-After the Hub sends is honoured, and the last failure raises PushError, whose message says
how to push the same results later. The caller installs the request timeouts (bench.hub.http).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.errors import UserError
from bench.hub.http import describe_timeout
from bench.secrets import REDACTED, redact, redact_bytes

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class CommitResult:
    """What one commit of files to a dataset repo gave."""

    repo_id: str
    repo_url: str  # the dataset page, e.g. https://huggingface.co/datasets/ORG/NAME
    commit_url: str
    commit_oid: str | None
    files: tuple[str, ...]  # paths in the repository
    attempts: int  # 1 when the first try went through


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


# ---------------------------------------------------------------------------------------------
# Checks before any request

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


def offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


# ---------------------------------------------------------------------------------------------
# The token, kept out


def scrub(text: str, token: str | None) -> str:
    """The text without the token, secret environment values or anything shaped like a token."""
    if token:
        text = text.replace(token, REDACTED)
    return redact(text)


def scrub_files(files: Mapping[str, bytes], token: str) -> dict[str, bytes]:
    """The files to upload with the token and token-shaped strings replaced (results written by
    something else may hold one); files without any are returned byte for byte."""
    needle = token.encode()
    return {p: redact_bytes(c.replace(needle, REDACTED.encode())) for p, c in files.items()}


# ---------------------------------------------------------------------------------------------
# Failures and the retry loop


@dataclass
class Failure:
    status: int | None  # the HTTP status; None: no answer
    retryable: bool
    detail: str  # not yet scrubbed
    retry_after: float | None = None


def classify(exc: BaseException) -> Failure:
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
        return Failure(status, retryable, server.strip(), retry_after)
    if isinstance(exc, OfflineModeIsEnabled):
        return Failure(None, False, "HF_HUB_OFFLINE=1 forbids reaching the Hub")
    timeout = describe_timeout(exc)
    if timeout is not None:  # retried like a 5xx
        return Failure(None, True, timeout)
    if isinstance(exc, httpx2.TransportError):
        return Failure(None, True, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, json.JSONDecodeError):  # a gateway's HTML error page where JSON was expected
        return Failure(None, True, "the Hub answered with something that is not JSON (a gateway error?)")
    # e.g. ValueError: the Hub refused the card's metadata; anything else is not worth a retry either
    return Failure(None, False, f"{type(exc).__name__}: {exc}")


def commit_with_retries(
    attempt: Callable[[int], T],
    *,
    repo_id: str,
    token: str,
    endpoint: str,
    what: str,
    later: str,
    kept: str | None = None,
    token_name: str = "HF_TOKEN",
    retries: int = 5,
    backoff: float = 2.0,
    log: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    explain: Callable[[Failure], str | None] | None = None,
) -> T:
    """attempt(n) for n = 1, 2, ... until it returns, tried again after a transient failure.

    `attempt` makes the whole push (every request of it) and returns its result; it is called
    again from the start after a failure, so it must be safe to repeat (one commit is). The
    waits are backoff, 2*backoff, 4*backoff, ... seconds (at most MAX_BACKOFF_S, at least a
    Retry-After the Hub sent), each scaled by a random factor in [0.5, 1]; each is logged, and
    emitted as a `push_retry` event on `log` when given. The last failure, or the first that
    cannot pass, raises PushError "could not push <what> to the Hub dataset <repo_id>: <why>.",
    then where the results stay (`kept`) and the command that pushes them later (`later`).
    `explain(failure)` may give the <why> of a failure the caller knows better (None: the usual
    one); a 401 or 403 names `token_name`. `token` is scrubbed from every text.
    PushConfigError and PushError raised by `attempt` pass through untouched.
    """
    attempts = 0
    while True:
        attempts += 1
        try:
            return attempt(attempts)
        except (PushConfigError, PushError):
            raise
        except Exception as exc:
            failure = classify(exc)
            status = f"HTTP {failure.status}" if failure.status is not None else "no HTTP answer"
            detail = scrub(failure.detail, token)
            if failure.retryable and attempts <= retries:
                wait = min(MAX_BACKOFF_S, backoff * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
                if failure.retry_after is not None:
                    wait = min(MAX_BACKOFF_S, max(wait, failure.retry_after))
                message = f"push to {repo_id} failed ({status}: {detail}); retry {attempts}/{retries} in {wait:.1f} s"
                logger.warning(message)
                if log is not None:
                    fields = {
                        "repo": repo_id,
                        "status": failure.status,
                        "attempt": attempts,
                        "wait_s": round(wait, 3),
                    }
                    log.emit("push_retry", level="warning", message=message, **fields)
                sleep(wait)
                continue
            why = explain(failure) if explain is not None else None
            if why is None and failure.status in (401, 403):
                why = (
                    f"the Hub refused the token ({status}): {token_name} must be a token with write access "
                    f"to {repo_id} (a fine-grained token needs write access to the "
                    f"{repo_id.split('/')[0]} namespace)"
                )
            elif why is None and failure.retryable:
                why = f"{status} from {endpoint} after {attempts} attempts: {detail}"
            elif why is None:
                why = f"{status} from {endpoint}: {detail}"
            if kept is not None:
                after = f"The results are unchanged in {kept}; push them later with: {later}"
            else:
                after = f"Push them later with: {later}"
            message = f"could not push {what} to the Hub dataset {repo_id}: {why}. {after}"
            raise PushError(
                scrub(message, token),
                repo_id=repo_id,
                status=failure.status,
                retryable=failure.retryable,
                attempts=attempts,
            ) from None
