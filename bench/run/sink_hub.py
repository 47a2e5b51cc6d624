"""The filesystem behind the run sink's hf://datasets/ORG/NAME[/PREFIX] (bench.run.sink):
huggingface_hub's HfFileSystem, with what it lacks for the sink's guarantees (from the source of
huggingface_hub 2.4.0 and fsspec):

- An exclusive create. fsspec's pipe_file(mode="create") checks exists() and then writes, and
  exists() answers False for *any* failure (a 503, a timeout: HfHubHTTPError is an OSError), so a
  lease generation held by another machine was overwritten whenever the check failed. Here the
  file is looked up at one commit of the repository (the head), and the write is a commit whose
  parent must still be that head (create_commit's parent_commit): the Hub refuses it with 412
  when any other commit came in between, and the lookup is made again on the new head.
- A delete of a file that is not there raises FileNotFoundError, as fsspec's stores do; the Hub
  answers 404 (EntryNotFound, "A file with this name doesn't exist"), an error of another kind.
- A repository that is not there (or that the token may not read: the Hub answers 401 or 404
  alike) is no absent file: HfFileSystem raises FileNotFoundError for it, which made a get None
  and a listing empty; here it is an OSError that names it, as a missing S3 bucket is.
- A commit that lost a race with another is transient. The Hub serializes the commits of a branch
  and answers 412 ("A commit has happened since") to the loser, with or without a parent commit
  (two machines, or a lease's heartbeat and the uploads of one machine); another try is what it
  asks for.

Every Hub write is a commit: each put, create and delete adds one to the repository's history.
Requests take tfbench's Hub timeouts (bench.hub.http). HfFileSystem retries a listing and a read
itself on 408/429/5xx and dropped connections (huggingface_hub's http_backoff: 5 more tries,
1+2+4+8+8 s apart), inside each of the sink's tries; every operation starts with a request that
is not retried so (the repository's info), so a Hub that is down fails fast.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from bench.hub import http as hub_http

# A create that keeps losing races to other commits (a busy repository) gives up after this many
# tries; the sink's retry loop then tries again after its backoff.
RACES = 3
_CONFLICT = 412


def raced(exc: BaseException) -> bool:
    """Whether `exc` is the Hub refusing a commit because another one came first (HTTP 412)."""
    errors = sys.modules.get("huggingface_hub.errors")
    if errors is None or not isinstance(exc, errors.HfHubHTTPError):
        return False
    return getattr(exc.response, "status_code", None) == _CONFLICT


def transient(exc: BaseException) -> bool:
    """A Hub failure worth another try: bench.hub.http's (timeouts, 408, 429, 5xx), or a race."""
    return hub_http.transient(exc) or raced(exc)


def create(fs: Any, path: str, data: bytes) -> None:
    """Write `data` at `path` (a path of HfFileSystem `fs`) in a commit, only if no file is there:
    FileExistsError then. Exclusive, see the module docstring."""
    from huggingface_hub import CommitOperationAdd, HfApi

    where = fs.resolve_path(path)
    api, repo_id, kind = HfApi(endpoint=fs.endpoint, token=fs.token), where.repo_id, where.repo_type
    for attempt in range(1, RACES + 1):
        head = api.repo_info(repo_id, repo_type=kind, revision=where.revision).sha
        if api.get_paths_info(repo_id, [where.path_in_repo], revision=head, repo_type=kind):
            raise FileExistsError(path)
        try:
            api.create_commit(
                repo_id,
                [CommitOperationAdd(path_in_repo=where.path_in_repo, path_or_fileobj=data)],
                commit_message=f"Create {where.path_in_repo}",
                repo_type=kind,
                revision=where.revision,
                parent_commit=head,
            )
            return
        except Exception as exc:
            if not raced(exc) or attempt == RACES:
                raise
    raise AssertionError("unreachable")


@functools.cache
def _filesystem_class() -> type:
    # Defined on first use: importing huggingface_hub costs time that other sinks need not pay.
    from huggingface_hub import HfFileSystem
    from huggingface_hub.errors import EntryNotFoundError

    class SinkHubFileSystem(HfFileSystem):  # type: ignore[misc]
        """HfFileSystem with an exclusive create, a delete that knows an absent file, and a
        missing repository that is not a missing file."""

        def resolve_path(self, path: str, revision: str | None = None) -> Any:
            try:
                return super().resolve_path(path, revision=revision)
            except FileNotFoundError as exc:  # only ever for the repository or the revision
                raise OSError(str(exc)) from exc

        def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
            if mode == "create":
                create(self, path, value)
            else:
                super().pipe_file(path, value, mode=mode, **kwargs)

        def rm_file(self, path: str) -> None:
            try:
                super().rm_file(path)
            except EntryNotFoundError as exc:
                raise FileNotFoundError(path) from exc

    return SinkHubFileSystem


def filesystem(**storage_options: Any) -> Any:
    """A filesystem of the sink's own (fsspec shares instances with equal options)."""
    hub_http.use_timeouts()
    return _filesystem_class()(skip_instance_cache=True, **storage_options)
