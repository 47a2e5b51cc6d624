"""A durable copy of a run off the machine (spot VMs lose their disk): an object store (S3, GCS,
Azure), a Hub dataset or a directory, through fsspec. The runner copies a run's files here between
cells and restores them on a new machine. Files are addressed by names relative to the sink's URL
("RUN/run.json", "RUN/cells/ID.json"):

- put: a reader sees the old content or the new one, never a part (object stores replace an
  object atomically; a directory gets a temporary file renamed over the name).
- get: the bytes, or None when the file does not exist (absence is an answer, not a failure).
- list: the relative names of the files below a directory, recursive and sorted; [] when none.
- create: exclusive; True when this call created the file, False when it existed. On S3 a
  conditional PUT (If-None-Match: *: 412 when the key exists; moto honours it too); in a
  directory, a complete temporary file hard-linked to the name (link fails when the name exists,
  and no reader sees a half-written file); on the Hub, a commit whose parent must be the commit
  the file was found absent in (bench.run.sink_hub). Elsewhere (GCS, Azure) check, then write.

An operation failing transiently (connection refused or reset, a timeout, HTTP 408/429/5xx,
throttling) is tried again after backoff_s, 2*backoff_s, ... seconds, `retries` times; then, or at
once for any other failure, SinkError. Ours is the only retry loop (botocore's and s3fs's, 5 tries
with sleeps up to 15 s, are off), so that a dead sink costs a bounded time. An S3 request gives up
after `timeout_s` to connect and `timeout_s` between two reads; Hub requests take tfbench's Hub
timeouts (bench.hub.http), and some are retried inside (bench.run.sink_hub); a directory has none.

Credentials: only what each library finds in its standard places (AWS_* variables, a config file,
an instance role; GOOGLE_APPLICATION_CREDENTIALS; AZURE_STORAGE_*; HF_TOKEN); a URL carrying one
is refused. An S3-compatible store is named by the standard AWS_ENDPOINT_URL_S3 (or
AWS_ENDPOINT_URL), which botocore reads for every client it builds.

Leases (acquire_lease, renew_lease, release_lease) keep two machines from working on the same
run at once, with exclusive creates only; see acquire_lease.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import logging
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from bench.errors import UserError
from bench.run import sink_hub
from bench.secrets import REDACTED, looks_like_token, redact

logger = logging.getLogger(__name__)

T = TypeVar("T")

# scheme -> the package that implements it for fsspec (None: fsspec itself)
SCHEMES: dict[str, str | None] = {
    "s3": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "hf": "huggingface_hub",
    "file": None,
}
ALLOWED = (
    "s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] (or gcs://), az://CONTAINER[/PREFIX] (or abfs://), "
    "hf://datasets/ORG/NAME[/PREFIX], file:///ABSOLUTE/PATH"
)
CREDENTIALS_ADVICE = (
    "credentials come only from the standard sources: AWS_* variables or an instance role, "
    "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_* variables, HF_TOKEN"
)
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_AZ_CONTAINER = re.compile(r"\$root|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
# Prefix segments: what run ids and the names below them use; no "::" (fsspec's URL chaining).
_SEGMENT = re.compile(r"[A-Za-z0-9._~=+,-]+")
# Query parameter names that carry a credential (S3 presigned URLs, Azure SAS, GCS signed URLs).
_SECRET_PARAM = re.compile(r"key|token|secret|sig|password|credential|security|^sv$|^se$|^sp$", re.I)
# storage_options whose values are scrubbed from messages, like the environment's secrets
_SECRET_OPTION = re.compile(r"key|secret|token|password|credential|sas|connection_string", re.I)
_TMP_MARK = ".sink-tmp-"  # a directory sink's temporary files: .NAME.sink-tmp-RANDOM
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)
_MAX_BACKOFF_S = 30.0


def _shown(url: str) -> str:
    """`url` as it can be printed (once no user:password@ is in it): its query string replaced,
    token-shaped parts redacted."""
    return redact(re.sub(r"\?.*", f"?{REDACTED}", url, flags=re.S))


def _carries_credentials(scheme: str, rest: str) -> bool:
    """Whether `rest` (the URL after "scheme://") names a user or a password. Only az:// and
    abfs:// may hold an "@": CONTAINER@ACCOUNT.dfs.core.windows.net names an account, no secret.
    Any other "@" counts, wherever it is (a password may hold a "/", which ends the host part)."""
    if "@" not in rest:
        return False
    if scheme not in ("az", "abfs"):
        return True
    netloc, _, path = rest.partition("/")
    return "@" in path or netloc.count("@") > 1 or ":" in netloc.split("@", 1)[0]


def check_sink_url(url: str, source: str) -> str:
    """A sink URL given by a person, checked and normalized (scheme in lower case, no trailing
    slash); UserError (exit 2) naming `source`, the value and what is allowed. A URL that carries
    credentials is refused without being echoed."""

    def bad(why: str, shown: str | None = None) -> UserError:
        return UserError(f"{source} = {shown or _shown(str(url))!r}: {why}; allowed: {ALLOWED}")

    if not isinstance(url, str) or not url.strip():
        raise bad("empty")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise bad("contains whitespace or control characters")
    if "://" not in url:
        raise bad("not a URL (a local directory is written file:///ABSOLUTE/PATH)")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    hidden = f"{scheme}://{REDACTED}"
    if _carries_credentials(scheme, rest) or looks_like_token(url):
        raise bad(f"a URL must not carry credentials ({CREDENTIALS_ADVICE})", hidden)
    if "?" in rest:
        query = rest.split("?", 1)[1].split("#", 1)[0]
        names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
        if any(_SECRET_PARAM.search(n) for n in names):
            raise bad(f"a URL must not carry credentials ({CREDENTIALS_ADVICE})", hidden)
        raise bad("a query string is not allowed")
    if "#" in rest:
        raise bad("a fragment (#...) is not allowed")
    if scheme not in SCHEMES:
        raise bad(f"unknown scheme {scheme + '://' if scheme else '(none)'}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise bad(f"not a valid URL ({exc})") from None
    path = parts.path.rstrip("/")
    segments = path.split("/")[1:] if path else []
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise bad("a relative path, or a host; write an absolute path as file:///ABSOLUTE/PATH")
        if not parts.path.startswith("/"):
            raise bad("a relative path; write an absolute path as file:///ABSOLUTE/PATH")
        if "::" in path or "//" in path or any(s in (".", "..") for s in segments):
            raise bad("the path has an empty, '.' or '..' part, or '::'")
        normalized = "file://" + (path or "/")
    else:
        netloc = parts.netloc
        container = netloc.split("@", 1)[0]
        if scheme == "s3" and not _S3_BUCKET.fullmatch(netloc):
            raise bad(f"{netloc!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
        if scheme in ("gs", "gcs") and not _GCS_BUCKET.fullmatch(netloc):
            raise bad(f"{netloc!r} is not a GCS bucket name (lower-case letters, digits, '.', '_', '-')")
        if scheme in ("az", "abfs") and not _AZ_CONTAINER.fullmatch(container):
            raise bad(f"{container!r} is not an Azure container name (3-63 lower-case letters, digits, '-')")
        if scheme == "hf":
            if netloc != "datasets" or len(segments) < 2:
                raise bad("a Hub sink is a dataset repository: hf://datasets/ORG/NAME[/PREFIX]")
            if not (_HUB_NAME.fullmatch(segments[0]) and _HUB_NAME.fullmatch(segments[1])):
                raise bad(f"{segments[0]}/{segments[1]} is not a Hub repository id (ORG/NAME)")
        if any(not _SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
            raise bad("the prefix has an empty, '.' or '..' part, or a character not in A-Za-z0-9._~=+,-")
        normalized = f"{scheme}://{netloc}{path}"
    package = SCHEMES[scheme]
    if package is not None and importlib.util.find_spec(package) is None:
        raise bad(
            f"{scheme}:// needs the Python package {package}, which is not installed (pip install {package})"
        )
    return normalized


class SinkError(Exception):
    """The sink failed an operation: after every retry of a transient failure, or at once for any
    other (access denied, no such bucket). The message names the URL (without credentials), the
    operation, the file and the last error, redacted; `transient` says which of the two it was."""

    def __init__(self, url: str, operation: str, rel: str, reason: str, attempts: int, transient: bool):
        self.url, self.operation, self.rel, self.reason = url, operation, rel, reason
        self.attempts, self.transient = attempts, transient
        tries = f" after {attempts} attempts" if attempts > 1 else "" if transient else " (not retried)"
        super().__init__(f"sink {url}: {operation} {rel or '/'} failed{tries}: {reason}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from (s3fs wraps botocore's errors in OSError)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is s for s in seen):
        seen.append(current)
        yield current
        current = current.__cause__ or current.__context__


# Besides ConnectionError and TimeoutError (refused, reset, aborted, broken pipe, timed out).
_TRANSIENT_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN})
# S3's error codes for "try again"; ConditionalRequestConflict: two conditional writes of one key
# were in flight at once, and AWS asks the loser to retry.
_TRANSIENT_CODE = re.compile(
    r"SlowDown|Throttling(Exception)?|TooManyRequests|RequestLimitExceeded|RequestTimeout|InternalError|ServiceUnavailable|ConditionalRequestConflict"
)


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth another try: a dropped or refused connection, a timeout, HTTP
    408, 429 or 5xx, throttling. Libraries are only consulted when already imported."""
    from fsspec.exceptions import FSTimeoutError

    boto = sys.modules.get("botocore.exceptions")
    aiohttp = sys.modules.get("aiohttp")
    for item in _chain(exc):
        if isinstance(item, (TimeoutError, ConnectionError, FSTimeoutError)):
            return True
        if isinstance(item, OSError) and item.errno in _TRANSIENT_ERRNOS:
            return True
        if boto is not None and isinstance(item, (boto.HTTPClientError, boto.ConnectionError)):
            return True
        if aiohttp is not None and isinstance(
            item, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
        ):
            return True
        response = getattr(item, "response", None)
        if isinstance(response, dict):  # botocore's ClientError
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(response.get("Error", {}).get("Code"))
            if status in (408, 429) or status >= 500 or _TRANSIENT_CODE.fullmatch(code):
                return True
    if "huggingface_hub" in sys.modules:
        return sink_hub.transient(exc)
    return False


def _local_temp(path: str, data: bytes) -> str:
    """`data` in a new file next to `path`, flushed to disk; its name."""
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}{_TMP_MARK}{secrets.token_hex(6)}")
    # 0o666 less the umask, like any file the run writes (mkstemp would make it 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _local_put(path: str, data: bytes) -> None:
    tmp = _local_temp(path, data)
    try:
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # left only when the rename failed


def _local_create(path: str, data: bytes) -> None:
    """Exclusive and atomic: link() fails with FileExistsError when the name exists, and the name
    appears with its whole content. Where hard links are not supported, open(path, "xb"):
    still exclusive, but a reader can see the file before its bytes."""
    tmp = _local_temp(path, data)
    try:
        os.link(tmp, path)
    except OSError as exc:
        if isinstance(exc, FileExistsError) or exc.errno not in _NO_HARD_LINKS:
            raise
        with open(path, "xb") as f:
            f.write(data)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _seconds(value: object) -> bool:  # a finite number >= 0 (no bool)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0  # type: ignore[arg-type,operator]


class Sink:
    """Files below one fsspec URL, each operation bounded in time and retried (module docstring);
    safe to share between threads. `storage_options` go to the fsspec filesystem as they are
    (for S3, `config_kwargs` are merged over the timeouts set here)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        storage_options: dict[str, Any] | None = None,
    ):
        valid = _seconds(timeout_s) and timeout_s > 0 and _seconds(backoff_s) and _seconds(retries)
        if not (valid and isinstance(retries, int)):  # a program's arguments, not a person's input
            raise ValueError(
                f"timeout_s > 0, backoff_s >= 0, retries >= 0: {timeout_s!r} {backoff_s!r} {retries!r}"
            )
        self.url = check_sink_url(url, "sink URL")
        self.scheme = self.url.split("://", 1)[0]
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), retries, float(backoff_s)
        options = dict(storage_options or {})
        # Values to scrub from messages besides the environment's secrets.
        found = {str(v) for k, v in options.items() if _SECRET_OPTION.search(k) and v and len(str(v)) >= 4}
        self._secrets = sorted(found, key=len, reverse=True)
        self._local = self.scheme == "file"
        self._fs, root = self._open(options)
        self._root = root.rstrip("/")

    def _open(self, options: dict[str, Any]) -> tuple[Any, str]:
        import fsspec.core

        if self.scheme == "s3":
            config = {
                "connect_timeout": self.timeout_s,
                "read_timeout": self.timeout_s,
                "retries": {"total_max_attempts": 1},  # one request per try: our loop retries
            }
            config.update(options.pop("config_kwargs", None) or {})
            options = {"use_listings_cache": False, **options, "config_kwargs": config}
        elif self.scheme == "hf":  # HfFileSystem, with what it lacks for a sink (bench.run.sink_hub)
            return sink_hub.filesystem(**options), self.url[len("hf://") :]
        # A filesystem of our own: fsspec shares instances with equal options, and we change one.
        fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True, **options)
        if self.scheme == "s3":
            fs.retries = 1  # s3fs's own loop: 5 tries with sleeps, outside our bounds
        return fs, root

    def _path(self, rel: str) -> str:
        parts = rel.split("/") if isinstance(rel, str) else [""]
        if not rel or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a relative name in the sink: {rel!r}")
        return f"{self._root}/{rel}"

    def _scrub(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, REDACTED)
        return redact(text)

    def _call(self, operation: str, rel: str, fn: Callable[[int], T]) -> T:
        """fn(attempt), tried again on a transient failure; SinkError when it gives up."""
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                if self.scheme == "hf":  # HfFileSystem keeps listings for good: others' writes unseen
                    self._fs.invalidate_cache()
                return fn(attempt)
            except Exception as exc:
                transient = is_transient(exc)
                reason = self._scrub(f"{type(exc).__name__}: {exc}")
                if not transient or attempt == attempts:
                    raise SinkError(self.url, operation, rel, reason, attempt, transient) from exc
                wait = min(self.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
                what = f"sink {self.url}: {operation} {rel} failed ({reason})"
                logger.warning("%s; retry %d/%d in %.2f s", what, attempt, attempts - 1, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def put(self, rel: str, data: bytes) -> None:
        """Write `data` at `rel`, replacing what was there; readers see old or new, never a part."""
        path = self._path(rel)

        def put(_: int) -> None:
            if self._local:
                _local_put(path, data)
            else:
                self._fs.pipe_file(path, data)

        self._call("put", rel, put)

    def get(self, rel: str) -> bytes | None:
        """The bytes at `rel`; None when there is no such file."""
        path = self._path(rel)

        def get(_: int) -> bytes | None:
            try:
                return bytes(self._fs.cat_file(path))
            except FileNotFoundError:
                return None

        return self._call("get", rel, get)

    def list(self, rel_dir: str) -> list[str]:
        """The names of the files below `rel_dir` ("" for the whole sink), relative to it,
        recursive and sorted; [] when there are none."""
        base = self._path(rel_dir.strip("/")) if rel_dir.strip("/") else self._root
        prefix = base.rstrip("/") + "/"

        def find(_: int) -> list[str]:
            try:
                found = self._fs.find(base)
            except FileNotFoundError:
                return []
            names = (str(p)[len(prefix) :] for p in found if str(p).startswith(prefix))
            # a put or create in flight in a directory sink: its temporary file is no result
            return sorted(n for n in names if _TMP_MARK not in n.rsplit("/", 1)[-1])

        return self._call("list", rel_dir, find)

    def delete(self, rel: str) -> None:
        """Remove `rel`; nothing happens when it does not exist."""
        path = self._path(rel)

        def delete(_: int) -> None:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm_file(path)

        self._call("delete", rel, delete)

    def create(self, rel: str, data: bytes) -> bool:
        """Write `data` at `rel` only if nothing is there: True when this call created it, False
        when the file existed (someone else won). Exclusive on S3 and in a directory; write-if-
        absent on other stores (module docstring)."""
        path = self._path(rel)

        def create(attempt: int) -> bool:
            try:
                if self._local:
                    _local_create(path, data)
                else:
                    self._fs.pipe_file(path, data, mode="create")
                return True
            except FileExistsError:
                # A retry after a lost answer can find our own earlier try's object: the same
                # bytes (a lease names its owner and time) mean this call created it.
                if attempt > 1:
                    with contextlib.suppress(FileNotFoundError):
                        return bytes(self._fs.cat_file(path)) == data
                return False

        return self._call("create", rel, create)


# Leases ---------------------------------------------------------------------------------------

LEASE_DIR = "lease"
KEEP_GENERATIONS = 3  # the current one and the two before it
_GENERATION = re.compile(r"(\d{8})\.json")


@dataclass(frozen=True)
class LeaseState:
    """A run's lease as seen by the owner who asked: `held` when that owner holds it now. `owner`
    is the one named by the newest generation (None: never leased, or unreadable; the times are
    then 0), `generation` its number (0: none). A released lease names its last owner and is free."""

    held: bool
    owner: str | None
    acquired_at: float
    expires_at: float
    generation: int
    released: bool = False


def _lease_rel(run_id: str, generation: int) -> str:
    return f"{run_id}/{LEASE_DIR}/{generation:08d}.json"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def _check_lease_args(run_id: str, owner: str, ttl_s: float | None = None) -> None:
    # run_id names the leased thing, a run or one shard of it ("RUN/shards/2")
    if not isinstance(run_id, str) or any(p in ("", ".", "..") for p in run_id.split("/")):
        raise ValueError(f"not a run id: {run_id!r}")
    if not isinstance(owner, str) or not owner.strip():
        raise ValueError(f"a lease owner is a non-empty string, not {owner!r}")
    if ttl_s is not None and not (_seconds(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a number of seconds > 0, not {ttl_s!r}")


def _parse(data: bytes | None) -> dict[str, Any] | None:
    """A generation's record, or None when it is not one (then it counts as expired: no file
    written here is ever partial, so such a file was damaged by someone else)."""
    try:
        record = json.loads(data) if data is not None else None
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("owner"), str):
        return None
    for key in ("acquired_at", "expires_at"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
    return record


@dataclass(frozen=True)
class _Newest:
    generation: int  # 0: none
    record: dict[str, Any] | None
    listed: list[int]  # every generation there


def _newest(sink: Sink, run_id: str) -> _Newest:
    for _ in range(3):
        names = sink.list(f"{run_id}/{LEASE_DIR}")
        generations = sorted(int(m.group(1)) for n in names if (m := _GENERATION.fullmatch(n)))
        if not generations:
            return _Newest(0, None, [])
        data = sink.get(_lease_rel(run_id, generations[-1]))
        if data is not None:
            return _Newest(generations[-1], _parse(data), generations)
        # deleted between the listing and the read (by hand: pruning never takes the newest)
    return _Newest(generations[-1], None, generations)


def _live(record: dict[str, Any] | None, now: float) -> bool:
    return record is not None and not record.get("released") and now < record["expires_at"]


def _state(record: dict[str, Any] | None, generation: int, owner: str, now: float) -> LeaseState:
    if record is None:
        return LeaseState(False, None, 0.0, 0.0, generation)
    held = record["owner"] == owner and _live(record, now)
    times = float(record["acquired_at"]), float(record["expires_at"])
    return LeaseState(held, record["owner"], *times, generation, bool(record.get("released")))


def _write_next(sink: Sink, run_id: str, newest: _Newest, record: dict[str, Any], now: float) -> LeaseState:
    """Create the generation after `newest` holding `record`; the state the store ends up with."""
    new = newest.generation + 1
    iso = {f"{key}_iso": _iso(record[key]) for key in ("acquired_at", "expires_at")}
    body = {**record, **iso, "generation": new}
    data = (json.dumps(body, sort_keys=True) + "\n").encode()
    if not sink.create(_lease_rel(run_id, new), data):
        # Someone else created it first: theirs is the lease now.
        return _state(_parse(sink.get(_lease_rel(run_id, new))), new, record["owner"], now)
    for old in newest.listed:
        if old <= new - KEEP_GENERATIONS:
            try:
                sink.delete(_lease_rel(run_id, old))
            except SinkError as exc:  # only clutter: the next holder's pruning removes it
                logger.warning("lease of %s: could not delete generation %d: %s", run_id, old, exc)
    return _state(body, new, record["owner"], now)


def acquire_lease(sink: Sink, run_id: str, owner: str, ttl_s: float, now: float | None = None) -> LeaseState:
    """Take the lease on `run_id` for `ttl_s` seconds, unless another owner holds it.

    The lease is a series of generations, RUN/lease/<n:08d>.json, each holding {owner,
    acquired_at, expires_at} (epoch seconds, and ISO text); the newest is the truth. Acquiring
    reads the newest; when it is absent, expired, released or `owner`'s own, it creates
    generation n+1 exclusively. Of two machines racing for n+1 exactly one create succeeds; the
    other reads the winner's record and is told it does not hold the lease. No compare-and-swap is
    needed, and a record, once written, never changes. After a successful create, generations
    older than the previous two are deleted.

    `owner` must be unique per process (host, pid, a random part): one owner is one holder.
    Expiry compares the clocks of different machines: keep ttl_s far above their skew, and renew
    well before it runs out (every ttl_s/3, say). Raises SinkError when the sink fails.
    """
    _check_lease_args(run_id, owner, ttl_s)
    now = time.time() if now is None else now
    newest = _newest(sink, run_id)
    live = newest.record if _live(newest.record, now) else None
    if live is not None and live["owner"] != owner:
        return _state(live, newest.generation, owner, now)
    # re-acquiring a live lease of one's own keeps its start; anything else starts now
    acquired_at = float(live["acquired_at"]) if live is not None else now
    new = {"owner": owner, "acquired_at": acquired_at, "expires_at": now + ttl_s}
    return _write_next(sink, run_id, newest, new, now)


def renew_lease(sink: Sink, run_id: str, owner: str, ttl_s: float, now: float | None = None) -> LeaseState:
    """Extend `owner`'s lease to now + ttl_s by creating the next generation. Not held (another
    owner took it over, or it was released) -> the state, with held False: stop working on the run.
    A lease of `owner` that expired but that nobody took over is still renewed."""
    _check_lease_args(run_id, owner, ttl_s)
    now = time.time() if now is None else now
    newest = _newest(sink, run_id)
    record = newest.record
    if record is None or record["owner"] != owner or record.get("released"):
        return _state(record, newest.generation, owner, now)
    new = {"owner": owner, "acquired_at": float(record["acquired_at"]), "expires_at": now + ttl_s}
    return _write_next(sink, run_id, newest, new, now)


def release_lease(sink: Sink, run_id: str, owner: str, now: float | None = None) -> LeaseState:
    """Give the lease up (the run is finished or this machine stops): a next generation marked
    released, which any owner may take at once. Nothing happens when `owner` does not hold it."""
    _check_lease_args(run_id, owner)
    now = time.time() if now is None else now
    newest = _newest(sink, run_id)
    record = newest.record
    if record is None or record["owner"] != owner or record.get("released"):
        return _state(record, newest.generation, owner, now)
    new = {"owner": owner, "acquired_at": float(record["acquired_at"]), "expires_at": now, "released": True}
    return _write_next(sink, run_id, newest, new, now)
