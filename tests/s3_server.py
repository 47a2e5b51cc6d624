"""A real S3-compatible server for the tests and the benchmarks: moto's ThreadedMotoServer in this
process, on 127.0.0.1 and a free port, speaking the S3 REST API over HTTP (so s3fs, aiobotocore
and botocore run as they do against AWS: signing, conditional writes, listings, errors).

    with s3_server() as s3:          # started, one bucket created, this process pointed at it
        sink = Sink(s3.url("runs"))  # s3://BUCKET/runs
        s3.stop()                    # the sink goes down (connections refused) ...
        s3.start()                   # ... and comes back on the same port, its objects kept

In a test, the fixture `s3` does the same with monkeypatch: `from tests.s3_server import
s3_fixture  # noqa: F401` makes it a test module's (under another name, so that ruff sees no
redefinition). `serve(monkeypatch, shared)` gives each test a fresh bucket in a shared server.

Pointing another process at it (a tfbench subprocess, a benchmark's worker): give it
`s3.subprocess_env()` as its environment, which is the parent's environment with

    AWS_ENDPOINT_URL_S3=http://127.0.0.1:PORT   botocore (>= 1.31) reads it for every S3 client,
                                                 aiobotocore's (s3fs's) included; no code change
    AWS_ACCESS_KEY_ID=testing                    dummy values: moto accepts any
    AWS_SECRET_ACCESS_KEY=testing
    AWS_DEFAULT_REGION=us-east-1
    AWS_EC2_METADATA_DISABLED=true               no probe of an instance role
    AWS_CONFIG_FILE=AWS_SHARED_CREDENTIALS_FILE=/dev/null   a developer's ~/.aws is not read

and without AWS_PROFILE, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL and AWS_IGNORE_CONFIGURED_ENDPOINT_URLS
(the last would make botocore ignore the endpoint). The run's sink URL is then s3.url(PREFIX).

moto checks If-None-Match (a create's condition) but not atomically; S3Server makes it atomic, as
on S3 (_atomic_conditional_puts). moto keeps its buckets in this process's memory, shared by every server started here: each S3Server
makes a bucket of its own (a fresh name), and stop()/start() keep its objects, like an outage.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
REMOVED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")


_PUT_LOCK = threading.Lock()


def _atomic_conditional_puts() -> None:
    """Make moto's PUT with If-None-Match: * atomic, as it is on S3. moto 5.2.5 honours the
    header (412 PreconditionFailed when the key exists) but checks, then stores, with no lock
    between, while werkzeug serves requests on threads: two racing creates could both succeed.
    One lock around every PutObject of this process closes that window."""
    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "tfbench_atomic", False):
        return
    original = S3Response.put_object

    @functools.wraps(original)
    def put_object(self: Any) -> Any:
        with _PUT_LOCK:
            return original(self)

    put_object.tfbench_atomic = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object  # type: ignore[method-assign]


class S3Server:
    """moto's S3 on 127.0.0.1; `port` 0 picks a free one, kept across stop() and start()."""

    def __init__(self, port: int = 0, bucket: str | None = None):
        self.port = port
        self.bucket = bucket or f"tfbench-{uuid.uuid4().hex[:12]}"
        self._server: Any = None
        # moto answers through werkzeug, which logs every request at INFO
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Serve (again) on the same port; the bucket is created the first time."""
        from moto.server import ThreadedMotoServer

        if self._server is not None:
            return
        _atomic_conditional_puts()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server
        first = self.port == 0
        self.port = server.get_host_and_port()[1]
        if first:
            self.client().create_bucket(Bucket=self.bucket)

    def new_bucket(self) -> str:
        """Make a fresh bucket this server's bucket from now on (tests that share one server)."""
        self.bucket = f"tfbench-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=self.bucket)
        return self.bucket

    def stop(self) -> None:
        """Stop answering: the listening socket is closed, so connections are refused."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        """A boto3 S3 client of this server, whatever the environment says."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=ENV["AWS_DEFAULT_REGION"],
        )

    def url(self, prefix: str = "") -> str:
        """The sink URL of `prefix` in this server's bucket: s3://BUCKET[/PREFIX]."""
        return f"s3://{self.bucket}" + (f"/{prefix.strip('/')}" if prefix.strip("/") else "")

    def env(self) -> dict[str, str]:
        """The variables that point a process at this server (module docstring)."""
        return {**ENV, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def apply(self, environ: MutableMapping[str, str]) -> None:
        """Point `environ` (os.environ, or a subprocess's copy) at this server."""
        for name in REMOVED:
            environ.pop(name, None)
        environ.update(self.env())

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) pointed at this server, for Popen(env=...)."""
        environ = dict(os.environ if base is None else base)
        self.apply(environ)
        return environ

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def s3_server(port: int = 0, bucket: str | None = None) -> Iterator[S3Server]:
    """A started server with its bucket, and os.environ pointed at it until the block ends
    (outside pytest: benchmarks, scripts)."""
    saved = {name: os.environ.get(name) for name in (*ENV, *REMOVED, "AWS_ENDPOINT_URL_S3")}
    with S3Server(port, bucket) as server:
        server.apply(os.environ)
        try:
            yield server
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def serve(monkeypatch: pytest.MonkeyPatch, shared: S3Server | None = None) -> Iterator[S3Server]:
    """A fixture's body (`yield from serve(monkeypatch)`): a server with its bucket and the test's
    environment pointed at it (monkeypatch restores it). Without `shared`, a server of its own,
    stopped afterwards (stopping one takes 0.5 s: werkzeug's poll interval); with `shared` (a
    running server of a module-scoped fixture), a fresh bucket in it."""
    with contextlib.ExitStack() as stack:
        if shared is None:
            server = stack.enter_context(S3Server())
        else:
            server = shared
            server.new_bucket()
        for name in REMOVED:
            monkeypatch.delenv(name, raising=False)
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.fixture(name="s3")
def s3_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A fresh S3 server and bucket for one test, with the environment pointed at it."""
    yield from serve(monkeypatch)
