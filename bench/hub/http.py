"""Timeouts for every request tfbench makes to the Hub (pushes, `history --repo`, `compare hub:`).

huggingface_hub 2.4.0 sends every request through one shared `httpx2.Client` (`get_session()`),
built by `default_client_factory()` with `timeout=None`, and many calls pass a timeout of their
own that overrides the client's: `HfApi.dataset_info` and `repo_info` pass `timeout=None` (no
limit at all), `hf_hub_download` passes 10 s for a file's metadata, then 60 s when it retries
(`_ETAG_RETRY_TIMEOUT`). A client-wide timeout alone therefore does not bound them. Instead,
`use_timeouts()` installs (with `set_client_factory`) huggingface_hub's own client with one more
request hook, run just before each request goes out, that caps whatever timeout the request
carries: at most TFBENCH_HUB_CONNECT_TIMEOUT_S to connect, at most TFBENCH_HUB_READ_TIMEOUT_S
between two reads of the answer (and for a write that makes no progress, and for a free
connection); a shorter limit huggingface_hub chose is kept. Only file contents that hf_xet
moves (large files stored with Xet) travel outside this client, over hf_xet's own connections.

A timeout is a failure like a 5xx: pushes retry it with their backoff (bench.hub.commit); readers
retry their listing of the repo with `with_retries` (hf_hub_download retries its own requests).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from bench.errors import UserError

logger = logging.getLogger(__name__)

CONNECT_ENV = "TFBENCH_HUB_CONNECT_TIMEOUT_S"
READ_ENV = "TFBENCH_HUB_READ_TIMEOUT_S"
DEFAULT_CONNECT_S = 10.0
DEFAULT_READ_S = 60.0
MAX_TIMEOUT_S = 3600.0
# Readers: a listing that timed out (or met a 5xx) is tried again this often, after 1 s, 2 s.
READ_RETRIES = 2
READ_BACKOFF_S = 1.0
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float

    def limits(self) -> dict[str, float]:
        """httpx2's four phases: the read timeout also bounds a stalled write and the pool wait."""
        return {"connect": self.connect, "read": self.read, "write": self.read, "pool": self.read}


def _seconds(name: str, environ: Mapping[str, str], default: float) -> float:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise UserError(
            f"environment variable {name} = {raw!r}: allowed: a number of seconds greater than 0 "
            f"and at most {MAX_TIMEOUT_S:g} (default {default:g})"
        )
    return value


def hub_timeouts(environ: Mapping[str, str] | None = None) -> Timeouts:
    """The connect and read timeouts from the environment; UserError (exit 2) for a bad value."""
    environ = os.environ if environ is None else environ
    return Timeouts(
        connect=_seconds(CONNECT_ENV, environ, DEFAULT_CONNECT_S),
        read=_seconds(READ_ENV, environ, DEFAULT_READ_S),
    )


def _cap(limits: dict[str, float], request: Any) -> None:
    """A request hook: each phase's timeout at most `limits` (none set counts as no limit)."""
    asked = request.extensions.get("timeout") or {}
    capped = {k: limit if asked.get(k) is None else min(asked[k], limit) for k, limit in limits.items()}
    request.extensions = {**request.extensions, "timeout": capped}


def _client_factory(timeouts: Timeouts) -> Any:
    import httpx2
    from huggingface_hub.utils._http import default_client_factory

    client = default_client_factory()  # huggingface_hub's hooks: offline mode, request ids
    limits = timeouts.limits()
    client.timeout = httpx2.Timeout(**limits)
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "request": [*hooks.get("request", []), partial(_cap, limits)]}
    return client


_installed: Timeouts | None = None


def use_timeouts(environ: Mapping[str, str] | None = None) -> Timeouts:
    """Read the timeouts and make huggingface_hub's shared client apply them to every request.

    Called before a push or a read; the client is rebuilt only when the values changed.
    """
    global _installed
    timeouts = hub_timeouts(environ)
    if timeouts != _installed:
        from huggingface_hub.utils import set_client_factory

        set_client_factory(partial(_client_factory, timeouts))
        _installed = timeouts
    return timeouts


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from (hf_hub_download wraps a timeout)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def describe_timeout(exc: BaseException, who: str = "the Hub") -> str | None:
    """What timed out, in words with the limit and its variable; None when `exc` is no timeout."""
    import httpx2

    for item in _chain(exc):
        if not isinstance(item, httpx2.TimeoutException):
            continue
        if isinstance(item, httpx2.ConnectTimeout):
            phase, what, variable = "connect", "did not accept a connection", CONNECT_ENV
        elif isinstance(item, httpx2.WriteTimeout):
            phase, what, variable = "write", "did not take the request", READ_ENV
        elif isinstance(item, httpx2.PoolTimeout):
            phase, what, variable = "pool", "had no free connection", READ_ENV
        else:
            phase, what, variable = "read", "did not answer", READ_ENV
        try:
            seconds = item.request.extensions["timeout"][phase]
        except (RuntimeError, KeyError, TypeError):  # no request attached: the configured value
            seconds = None
        if not isinstance(seconds, (int, float)):
            seconds = getattr(_installed or hub_timeouts({}), "connect" if phase == "connect" else "read")
        return f"{who} {what} within {seconds:g} s ({variable})"
    return None


def transient(exc: BaseException) -> bool:
    """A failure worth another try: a timeout, a dropped connection, HTTP 408, 429 or 5xx."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return status is not None and (status in _RETRY_STATUSES or status >= 500)
    return any(isinstance(item, httpx2.TransportError) for item in _chain(exc))


_sleep: Callable[[float], None] = time.sleep  # tests replace it


def with_retries(
    call: Callable[[], T],
    what: str,
    retries: int = READ_RETRIES,
    backoff: float = READ_BACKOFF_S,
) -> T:
    """call(), tried again `retries` times after backoff, 2*backoff, ... seconds on a transient
    failure; the last failure is raised as it came."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if attempt > retries or not transient(exc):
                raise
            wait = backoff * 2 ** (attempt - 1)
            detail = describe_timeout(exc) or type(exc).__name__
            logger.warning("%s failed (%s); retry %d/%d in %.1f s", what, detail, attempt, retries, wait)
            _sleep(wait)
