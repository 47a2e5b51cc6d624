"""A local stand-in for the Hugging Face Hub: just what huggingface_hub 2.4.0 calls to create a
dataset repo, commit small files to it and read them back, with HfApi or HfFileSystem (hf://, the
run sink) (read from the installed library's source):

    POST /api/repos/create                                 HfApi.create_repo (409 when it exists)
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]         HfApi.repo_info (create_repo after a
                                                           401/403 with exist_ok; create_commit when
                                                           every file is unchanged; HfFileSystem,
                                                           to resolve every path)
    POST /api/validate-yaml                                create_commit, when README.md is committed
    POST /api/{type}s/{ns}/{name}/preupload/{rev}          create_commit: upload mode of each file
    POST /api/{type}s/{ns}/{name}/commit/{rev}             create_commit: NDJSON, base64 contents;
                                                           412 when header.parentCommit is not the
                                                           head, 404 when a deleted file is absent
    GET  /{type}s/{ns}/{name}/resolve/{rev}/{path}         a file's content (tfbench reads README.md;
    HEAD                                                   HfFileSystem reads a file), Range too
    GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]      list_repo_tree (HfFileSystem ls, find,
                                                           info): ?recursive, ?expand, paginated
                                                           with a Link header (?cursor)
    POST /api/{type}s/{ns}/{name}/paths-info/{rev}         get_paths_info (HfFileSystem info):
                                                           form data paths=...&expand=...

{rev} is "main" (the head) or a commit's oid (the files as of that commit); any other is
RevisionNotFound. A path that is not there is EntryNotFound (404, X-Error-Code), which
huggingface_hub raises as RemoteEntryNotFoundError.

Every request is recorded (method, path, headers, body). `fail(status, times, ...)` answers the
next matching requests with an error before serving normally; `fail(status)` with times=None
answers that way for ever. Committed files are stored decoded, per repository.

`SilentHub` is a Hub that accepts connections and never answers (for the request timeouts).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

_REPO = r"(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
ROUTES = (
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "repo_info"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/api/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ("POST", re.compile(rf"^/api/{_REPO}/paths-info/(?P<rev>[^/]+)$"), "paths_info"),
)
# The Hub's pages of a tree listing: 1000 entries, 50 when each is expanded with its last commit.
PAGE_SIZE, EXPANDED_PAGE_SIZE = 1000, 50


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes
    endpoint: str  # the route's name, or "unknown"
    status: int = 0  # what the server answered

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Repo:
    repo_id: str
    type: str
    private: bool | None
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40

    def at(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        """(oid, files) at `rev`: "main" or the head's oid -> the files now; an older commit's oid
        -> replayed from the commits' added and deleted files; None for any other revision. (A
        repository of the real Hub starts with a commit; one of ours starts empty, at 0*40.)"""
        if rev in ("main", self.sha):
            return self.sha, self.files
        if rev == "0" * 40:  # the head of a repository before its first commit
            return rev, {}
        oids = [c["oid"] for c in self.commits]
        if rev not in oids:
            return None
        files: dict[str, bytes] = {}
        for commit in self.commits[: oids.index(rev) + 1]:
            for path in commit.get("deleted", []):
                files.pop(path, None)
            files.update(commit.get("files", {}))
        return rev, files


Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


@dataclass
class _Snapshot:
    repo: Repo
    oid: str
    files: dict[str, bytes]

    def entry(self, path: str, expand: bool) -> dict[str, Any] | None:
        """`path` as the tree and paths-info endpoints describe it; None when it is not there."""
        data = self.files.get(path)
        below = sorted(p for p in self.files if p.startswith(path + "/"))
        if data is not None:
            entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
        elif below:
            tree = hashlib.sha1("\0".join(below).encode()).hexdigest()  # any stable oid will do
            entry = {"type": "directory", "oid": tree, "size": 0, "path": path}
        else:
            return None
        if expand:
            entry["lastCommit"] = self.last_commit(path)
        return entry

    def last_commit(self, path: str) -> dict[str, str]:
        """The newest commit up to this one that touched `path` (or a file below it)."""
        oids = [c["oid"] for c in self.repo.commits]
        upto = self.repo.commits[: oids.index(self.oid) + 1] if self.oid in oids else []
        for commit in reversed(upto):
            changed = [*commit.get("files", {}), *commit.get("deleted", [])]
            if any(p == path or p.startswith(path + "/") for p in changed):
                break
        else:
            commit = upto[-1] if upto else {"oid": self.oid}
        title = commit.get("summary", "")
        return {"id": commit["oid"], "title": title, "date": "2026-01-01T00:00:00.000Z"}


@dataclass
class _Failure:
    status: int
    times: int | None  # None: for ever
    endpoints: tuple[str, ...] | None  # None: every request
    body: bytes
    headers: dict[str, str]


class FakeHub:
    """Start with `with FakeHub() as hub:`; `hub.endpoint` is the base URL to give HfApi."""

    def __init__(self, token: str | None = None):
        self.token = token  # when set, any other Authorization is answered 401
        self.requests: list[Request] = []
        self.page_size: int | None = None  # entries per page of a tree listing; None: the Hub's
        self.repos: dict[str, Repo] = {}
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )

    # ---- control -------------------------------------------------------------------------

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail(
        self,
        status: int,
        times: int | None = None,
        endpoints: tuple[str, ...] | str | None = None,
        body: bytes | str | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer `status` to the next `times` matching requests (None: to every one, for ever)."""
        if isinstance(endpoints, str):
            endpoints = (endpoints,)
        if body is None:
            body = {"error": f"fake hub: HTTP {status}"}
        if isinstance(body, dict):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data, ctype = (body.encode() if isinstance(body, str) else body), "text/html"
        with self._lock:
            self._failures.append(
                _Failure(status, times, endpoints, data, {"Content-Type": ctype, **(headers or {})})
            )

    def calls(self, endpoint: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if endpoint is None or r.endpoint == endpoint]

    def endpoints_called(self) -> list[str]:
        return [r.endpoint for r in self.calls()]

    def commits(self, repo_id: str) -> list[dict[str, Any]]:
        repo = self.repos.get(repo_id)
        return repo.commits if repo else []

    # ---- serving -------------------------------------------------------------------------

    def _take_failure(self, endpoint: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.endpoints is not None and endpoint not in failure.endpoints:
                    continue
                if failure.times is None:
                    return failure
                if failure.times > 0:
                    failure.times -= 1
                    return failure
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm and the
                # client's delayed ACK add 40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._serve("GET")

            def do_HEAD(self) -> None:
                self._serve("HEAD")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                path = unquote(url.path)
                endpoint, params = "unknown", {}
                for m, pattern, name in ROUTES:
                    match = pattern.match(path)
                    if m == method and match:
                        endpoint, params = name, {k: v for k, v in match.groupdict().items() if v}
                        break
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request(method, path, parse_qs(url.query), headers, body, endpoint)
                with hub._lock:
                    hub.requests.append(request)
                status, headers, data = hub._answer(request, params)
                request.status = status
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)

        return Handler

    def _answer(self, request: Request, params: dict[str, str]) -> Answer:
        failure = self._take_failure(request.endpoint)
        if failure is not None:
            return failure.status, failure.headers, failure.body
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            return _json(401, {"error": "Invalid credentials in Authorization header"})
        handler = getattr(self, f"_{request.endpoint}", None)
        if handler is None:
            return _json(404, {"error": f"fake hub: no route for {request.method} {request.path}"})
        return handler(request, params)

    def _repo(self, params: dict[str, str]) -> Repo | None:
        repo = self.repos.get(params["repo"])
        return repo if repo is not None and f"{repo.type}s" == params["type"] else None

    def _url(self, repo: Repo) -> str:
        prefix = "" if repo.type == "model" else f"{repo.type}s/"
        return f"{self.endpoint}/{prefix}{repo.repo_id}"

    def _create_repo(self, request: Request, params: dict[str, str]) -> Answer:
        payload = request.json()
        repo_id = (
            f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        )
        with self._lock:
            existing = self.repos.get(repo_id)
            if existing is not None:
                return _json(409, {"error": "You already created this repo", "url": self._url(existing)})
            visibility = payload.get("visibility")
            private = payload.get("private", None if visibility is None else visibility == "private")
            repo = self.repos[repo_id] = Repo(repo_id, payload.get("type") or "model", private)
        return _json(200, {"url": self._url(repo), "name": repo_id, "id": repo_id})

    def _snapshot(self, params: dict[str, str]) -> _Snapshot | Answer:
        """The repository at the revision asked for (a copy of its files); else the 404."""
        repo = self._repo(params)
        if repo is None:
            return _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        with self._lock:
            found = repo.at(params.get("rev", "main"))
        if found is None:
            return _json(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        return _Snapshot(repo, found[0], dict(found[1]))

    def _repo_info(self, request: Request, params: dict[str, str]) -> Answer:
        at = self._snapshot(params)
        if not isinstance(at, _Snapshot):
            return at
        siblings = [{"rfilename": p} for p in sorted(at.files)]
        return _json(
            200, {"id": at.repo.repo_id, "sha": at.oid, "private": at.repo.private, "siblings": siblings}
        )

    def _validate_yaml(self, request: Request, params: dict[str, str]) -> Answer:
        content = request.json().get("content", "")
        lines = content.splitlines()
        if lines and lines[0] == "---" and "---" in lines[1:]:
            end = lines[1:].index("---") + 1
            try:
                meta = yaml.safe_load("\n".join(lines[1:end]))
            except yaml.YAMLError as exc:
                return _json(400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []})
            if meta is not None and not isinstance(meta, dict):
                return _json(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _preupload(self, request: Request, params: dict[str, str]) -> Answer:
        repo = self._repo(params)
        if repo is None:
            return _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        files = []
        for f in request.json()["files"]:
            existing = repo.files.get(f["path"])
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(existing) if existing is not None else None,
                }
            )
        return _json(200, {"files": files, "commitOid": repo.sha})

    def _commit(self, request: Request, params: dict[str, str]) -> Answer:
        repo = self._repo(params)
        if repo is None:
            return _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        items = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header = next((i["value"] for i in items if i["key"] == "header"), None)
        if header is None or not header.get("summary"):
            return _json(400, {"error": "a commit needs a header with a summary"})
        added: dict[str, bytes] = {}
        deletions: list[tuple[str, str]] = []  # (key, path)
        for item in items:
            key, value = item["key"], item["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return _json(400, {"error": "fake hub: only base64 file contents"})
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deletions.append((key, value["path"]))
            elif key != "header":
                return _json(400, {"error": f"fake hub: {key} is not supported (LFS)"})
        with self._lock:
            # The Hub's compare-and-swap: a commit on top of a head that moved since is refused.
            if header.get("parentCommit") not in (None, repo.sha):
                return _json(412, {"error": "A commit has happened since. Please refresh and try again."})
            deleted: list[str] = []
            for key, path in deletions:
                folder = path.rstrip("/") + "/"
                gone = [path] if key == "deletedFile" else [p for p in repo.files if p.startswith(folder)]
                if not gone or gone[0] not in repo.files:
                    what = "file" if key == "deletedFile" else "folder"
                    message = f"A {what} with this name doesn't exist: {path}"
                    return _json(404, {"error": message}, {"X-Error-Code": "EntryNotFound"})
                deleted += gone
            for path in deleted:
                repo.files.pop(path, None)
            repo.files.update(added)
            oid = hashlib.sha1(f"{repo.repo_id}:{len(repo.commits)}:{header['summary']}".encode()).hexdigest()
            repo.commits.append(
                {
                    "oid": oid,
                    "summary": header["summary"],
                    "description": header.get("description", ""),
                    "files": dict(added),
                    "deleted": deleted,
                }
            )
        url = f"{self._url(repo)}/commit/{oid}"
        return _json(200, {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None})

    def _resolve(self, request: Request, params: dict[str, str]) -> Answer:
        at = self._snapshot(params)
        if not isinstance(at, _Snapshot):
            return at
        data = at.files.get(params["path"])
        if data is None:
            return _json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{git_blob_sha1(data)}"'}
        headers.update({"X-Repo-Commit": at.oid, "Accept-Ranges": "bytes"})
        # HfFileSystem reads a part (a buffered read), or the rest after a dropped stream
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", "").strip())
        if ranged is None:
            return 200, headers, data
        first = int(ranged[1])
        last = min(int(ranged[2]) if ranged[2] else len(data) - 1, len(data) - 1)
        if first > last:
            return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
        headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        return 206, headers, data[first : last + 1]

    def _tree(self, request: Request, params: dict[str, str]) -> Answer:
        at = self._snapshot(params)
        if not isinstance(at, _Snapshot):
            return at
        recursive, expand = _flag(request.query, "recursive"), _flag(request.query, "expand")
        path = params.get("path", "").strip("/")
        prefix = f"{path}/" if path else ""
        below = [p for p in at.files if p.startswith(prefix)]
        if path and not below:  # nothing there, or a file: the Hub lists folders only
            return _json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        names: set[str] = set()
        for name in below:
            parts = name[len(prefix) :].split("/")
            for depth in range(1, (len(parts) if recursive else 1) + 1):
                names.add(prefix + "/".join(parts[:depth]))
        entries = [at.entry(n, expand) for n in names]
        # folders first, like the Hub's "tree first" order; the client sorts anyway
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))  # type: ignore[index]
        size = self.page_size or (EXPANDED_PAGE_SIZE if expand else PAGE_SIZE)
        cursor = request.query.get("cursor", ["0"])[0]
        if not cursor.isdigit():
            return _json(400, {"error": f"fake hub: invalid cursor {cursor!r}"})
        start = int(cursor)
        headers = {}
        if start + size < len(entries):  # the next page's URL, as the Hub gives it (GitHub's style)
            query = urlencode({**{k: v[0] for k, v in request.query.items()}, "cursor": start + size})
            headers["Link"] = f'<{self.endpoint}{quote(request.path)}?{query}>; rel="next"'
        return _json(200, entries[start : start + size], headers)

    def _paths_info(self, request: Request, params: dict[str, str]) -> Answer:
        at = self._snapshot(params)
        if not isinstance(at, _Snapshot):
            return at
        form = parse_qs(request.body.decode())  # application/x-www-form-urlencoded
        entries = [at.entry(p.strip("/"), _flag(form, "expand")) for p in form.get("paths", [])]
        return _json(200, [e for e in entries if e is not None])  # paths not there are left out


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].lower() in ("1", "true")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


def serve(monkeypatch: Any, token: str, check_token: bool = False) -> Iterator[FakeHub]:
    """A FakeHub for the in-process Hub client (a fixture's body: `yield from serve(...)`).

    Online (the suite runs with HF_HUB_OFFLINE=1, which huggingface_hub reads once, at import),
    no proxy for it, HF_TOKEN set to `token` (checked on every request if `check_token`), and
    retries without sleeping: their delays are kept in `server.sleeps`.
    """
    from huggingface_hub import constants as hf_constants
    from huggingface_hub.utils import close_session

    from bench.hub import push as hub

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.delenv("TFBENCH_BRANCH", raising=False)
    sleeps: list[float] = []
    monkeypatch.setattr(hub, "_sleep", sleeps.append)
    close_session()
    with FakeHub(token=token if check_token else None) as server:
        server.sleeps = sleeps  # type: ignore[attr-defined]
        yield server
    close_session()


class SilentHub:
    """A Hub that hangs: listens on 127.0.0.1 (a free port), accepts every connection, reads
    nothing and never answers. The connections stay open until the server stops.

    Start with `with SilentHub() as hub:`; `hub.accepted()` counts the connections it took.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # the accept loop looks at the stop flag this often
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-hub", daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed
                return
            with self._lock:
                self._connections.append(connection)

    def accepted(self) -> int:
        with self._lock:
            return len(self._connections)

    def __enter__(self) -> SilentHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
