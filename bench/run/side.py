"""Workers that measure another transformers: a side server per source, and the runner's client of it.

multiprocessing's fork server is one per process, and it imports what that process's path finds.
To measure a transformers checkout, an unpacked wheel or another environment's release, the runner
starts a side server: `python -m bench.run.side`, with that source first on its import path (or
that environment's python). The side server imports the source once to prove it works and says
what it found, then runs its own fork server and starts each worker the runner asks for. The
runner keeps every decision (deadlines, stops, records); the side server only starts, relays and
reports how each worker ended. Two sides of `tfbench ab` are two side servers, one runner each.

Protocol, one JSON object per line: the side server's stdout carries `{"ready": facts}` or
`{"error": text}`, then `{"started": bool}`, `{"phase": [name, i, total]}` and `{"ended": {...}}`;
its stdin carries `{"op": "start"}`, `{"op": "run", ...}` and `{"op": "stop"}`. End of file on its
stdin (the runner is gone) stops the worker in flight and ends the side server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bench.errors import UserError
from bench.plan.matrix import Capabilities
from bench.results.records import Task
from bench.run.sources import Source, resolve
from bench.run.workers import Ended

# How long a side server may take to import its transformers and say so.
READY_TIMEOUT_S = 300.0


def probe() -> dict[str, Any]:
    """What this interpreter imports as transformers and torch (raises if either fails to import)."""
    import importlib.util
    import platform

    import torch
    import transformers

    import bench
    from bench.run.machine import (
        kernels_requirement,
        package_versions,
        quantization_minimums,
        quantization_packages,
    )

    packages = package_versions()
    # A checkout's src/ has no metadata: the module's own version is the one measured. tfbench is
    # this one, on the path without an install.
    packages["transformers"] = transformers.__version__
    packages["tfbench"] = bench.__version__
    return {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "transformers": transformers.__version__,
        "transformers_path": os.path.dirname(transformers.__file__ or ""),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "kernels": importlib.util.find_spec("kernels") is not None,
        "kernels_version": packages.get("kernels"),
        "kernels_required": kernels_requirement(os.path.dirname(transformers.__file__ or "")),
        "quantization_packages": quantization_packages(),
        "quantization_minimums": quantization_minimums(os.path.dirname(transformers.__file__ or "")),
        "packages": packages,
    }


def _import_failure(exc: BaseException) -> str:
    """The failing import in a sentence: the innermost module that could not be found, or the error."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"No module named {exc.name!r} ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def serve() -> int:
    """The side server's main loop (see the module's docstring for the protocol)."""
    from bench.run.workers import run_worker, start_worker_server

    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stdout carries the protocol only; anything a library prints goes to stderr
    lock = threading.Lock()

    def send(msg: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(msg) + "\n")
            out.flush()

    try:
        facts = probe()
    except BaseException as exc:  # noqa: BLE001 - the runner turns it into a clear error
        send({"error": _import_failure(exc)})
        return 3
    send({"ready": facts})
    ops: queue.Queue[dict[str, Any] | None] = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("op") == "stop":
                stop.set()
            else:
                ops.put(msg)
        stop.set()
        ops.put(None)  # end of file: the runner is gone

    threading.Thread(target=read, name="tfbench-side-read", daemon=True).start()
    while (msg := ops.get()) is not None:
        if msg["op"] == "start":
            send({"started": start_worker_server(stop.is_set)})
        elif msg["op"] == "run":
            stop.clear()
            ended = run_worker(
                Task.model_validate(msg["task"]),
                msg["name"],
                float(msg["timeout_s"]),
                stop.is_set,
                lambda name, i, total: send({"phase": [name, i, total]}),
            )
            send({"ended": dataclasses.asdict(ended)})
    return 0


def _relay(stream: Any) -> None:
    """The side server's stderr (warnings of the imports it made) through this process's own, which
    scrubs tokens (bench.secrets) as everything tfbench prints."""
    with contextlib.suppress(OSError, ValueError), stream:
        for line in iter(stream.readline, b""):
            sys.stderr.write(line.decode("utf-8", "replace"))
            sys.stderr.flush()


class SideServerGone(RuntimeError):
    """The side server ended while the runner needed it (a crash: its stderr says why)."""


class SideWorkers:
    """The runner's end of a side server: the same interface as bench.run.workers.LocalWorkers."""

    def __init__(self, source: Source):
        self.source = source
        self.proc: subprocess.Popen[bytes] | None = None
        self.facts: dict[str, Any] = {}
        self._buffer = b""
        self._stderr_relay: threading.Thread | None = None
        # What this side measures, for run.json and the run's identity: read once (git is asked
        # for the checkout's commit), so that both say the same.
        self.description: dict[str, Any] = {}

    def open(self) -> dict[str, Any]:
        """Start the side server and wait for what it imported; bad input (exit 2) if it cannot."""
        self.proc = subprocess.Popen(
            [self.source.python, "-m", "bench.run.side"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.source.environ(),
            # Its own session: a Ctrl-C reaches the runner, which stops the worker in order.
            start_new_session=True,
        )
        self._stderr_relay = threading.Thread(
            target=_relay, args=(self.proc.stderr,), name="tfbench-side-stderr", daemon=True
        )
        self._stderr_relay.start()
        try:
            msg = self._receive(READY_TIMEOUT_S)
        except SideServerGone:
            msg = None
        if msg is None or "ready" not in msg:
            self.close()
            why = (msg or {}).get(
                "error"
            ) or "the side server ended without saying why (see its stderr above)"
            raise UserError(
                f"{self.source.label}: {self.source.given!r} cannot be imported with "
                f"{self.source.python_label}: {why}"
            )
        self.facts = msg["ready"]
        self.description = {**self.source.describe(), "transformers": self.facts.get("transformers")}
        return self.facts

    def start(self, stop: Callable[[], bool]) -> bool:
        self._send({"op": "start"})
        return bool(self._answer("started", stop))

    def run(
        self,
        task: Task,
        name: str,
        timeout_s: float,
        stopping: Callable[[], bool],
        on_phase: Callable[[str, int, int], None],
    ) -> Ended:
        self._send({"op": "run", "task": task.model_dump(mode="json"), "name": name, "timeout_s": timeout_s})
        return Ended(**self._answer("ended", stopping, on_phase))

    def _answer(
        self, key: str, stopping: Callable[[], bool], on_phase: Callable[[str, int, int], None] | None = None
    ) -> Any:
        """Wait for the side server's `key` message, relaying phases, and passing a stop on once."""
        told = False
        while True:
            msg = self._receive(0.2)
            if msg is not None and "phase" in msg and on_phase is not None:
                on_phase(*msg["phase"])
            elif msg is not None and key in msg:
                return msg[key]
            if not told and stopping():
                self._send({"op": "stop"})
                told = True

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(OSError):
            proc.stdout.close()  # type: ignore[union-attr]
        if self._stderr_relay is not None:
            self._stderr_relay.join(timeout=5)  # its last lines are printed before this process goes on

    def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise SideServerGone(f"the side server of {self.source.given} has ended") from None

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None after `timeout` seconds or when the side server has ended."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                if self._buffer.strip():
                    break
                code = self.proc.wait()
                raise SideServerGone(f"the side server of {self.source.given} ended (exit code {code})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)


def open_side(given: str, label: str) -> SideWorkers:
    """A started side server for the source a person named (exit 2 when it cannot be measured)."""
    side = SideWorkers(resolve(given, label))
    side.open()
    return side


def side_capabilities(caps: Capabilities, facts: dict[str, Any]) -> Capabilities:
    """What the plan may assume on a side: optional packages as its environment has them, and the
    kernels versions its transformers asks for."""
    required = facts.get("kernels_required")
    return replace(
        caps,
        flash_attn=bool(facts.get("flash_attn")),
        kernels=bool(facts.get("kernels")),
        kernels_version=facts.get("kernels_version"),
        kernels_required=(str(required[0]), str(required[1])) if required else None,
        quantization_packages=facts.get("quantization_packages") or {},
        quantization_minimums=facts.get("quantization_minimums") or {},
    )


def side_environment(env: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """run.json's environment as the side's workers see it: its python and its packages."""
    return {
        **env,
        "python": facts.get("python_version"),
        "packages": facts.get("packages") or env["packages"],
    }


def side_commit(side: SideWorkers | None) -> dict[str, Any] | None:
    """The measured commit of a side: its checkout's (with whether the tree was dirty), else its version."""
    if side is None:
        return None
    described = side.description
    commit = described.get("commit") or {}
    return {
        "sha": commit.get("sha"),
        "dirty": commit.get("dirty"),
        "version": described.get("transformers"),
        "source": f"{side.source.kind} {side.source.given}",
    }


if __name__ == "__main__":
    sys.exit(serve())
