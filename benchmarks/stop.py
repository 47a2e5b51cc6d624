"""How fast tfbench stops on SIGTERM (run by `make bench`), printed as Markdown rows.

Spot instances and Kubernetes give a grace period (often 30 s) between SIGTERM and SIGKILL;
everything tfbench does on SIGTERM (kill the running cell's process group, record it as
interrupted, write the summary and run.json) must fit well inside it. Measured whole-process,
from the signal to the exit of `tfbench run`, at three moments:

(e) while a cell runs (a cell that never ends: TFBENCH_FAULT=...:hang);
(e') while the worker server starts (it imports torch and transformers for ~3 s);
(e'') after the restart: the time until the continued run has its first cell done.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "model": "synthetic:llama-tiny",
    "device": "cpu",
    "batch_size": [1, 2],
    "sequence_length": 16,
    "num_tokens_to_generate": 6,
    "warmup_iterations": 1,
    "measurement_iterations": 3,
    "max_attempts": 1,
}


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("TFBENCH_")}
    out.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return out


def start(workdir: Path, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "entrypoint.py")],
        env=env(TFBENCH_CONFIG=str(workdir / "config.yaml"), TFBENCH_OUTPUT=str(workdir / "out"), **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )


def first_cell_running(workdir: Path) -> bool:
    for path in (workdir / "out").glob("*/cells/*.json"):
        try:
            if json.loads(path.read_text())["status"] == "running":
                return True
        except (OSError, ValueError):
            pass
    return False


def stop_once(during_cell: bool) -> tuple[float, float]:
    """(seconds from SIGTERM to exit, seconds for the restart to finish the run)."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
        proc = start(workdir, TFBENCH_FAULT="*:hang" if during_cell else "")
        if during_cell:
            while not first_cell_running(workdir):
                time.sleep(0.02)
            time.sleep(0.5)
        else:
            time.sleep(1.0)  # the server is importing torch
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait()
        stop_s = time.perf_counter() - t
        if code != 143:
            sys.exit(f"expected exit 143 after SIGTERM, got {code}")
        t = time.perf_counter()
        if start(workdir).wait() != 0:
            sys.exit("the restarted run failed")
        return stop_s, time.perf_counter() - t


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    during = [stop_once(True) for _ in range(rounds)]
    starting = [stop_once(False) for _ in range(rounds)]
    stops = [s for s, _ in during]
    print("| check | measured | goal | |")
    print("|---|---|---|---|")
    print(
        f"| (e) SIGTERM while a cell runs -> exit 143, cell recorded, results flushed; median (max) of {rounds} "
        f"| **{statistics.median(stops):.2f} s** ({max(stops):.2f} s) | well inside 30 s | "
        f"{'meets goal' if max(stops) < 10 else 'MISSES goal'} |"
    )
    s2 = [s for s, _ in starting]
    print(
        f"| (e') SIGTERM while the worker server starts -> exit 143; median (max) of {rounds} "
        f"| **{statistics.median(s2):.2f} s** ({max(s2):.2f} s) | well inside 30 s | "
        f"{'meets goal' if max(s2) < 10 else 'MISSES goal'} |"
    )
    restarts = [r for _, r in during]
    print(
        f"| (e'') restart that continues the interrupted 2-cell run to the end, whole process; median of {rounds} "
        f"| {statistics.median(restarts):.2f} s | | |"
    )


if __name__ == "__main__":
    main()
