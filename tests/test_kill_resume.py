"""Kill-and-resume: stop a run with SIGTERM or SIGKILL at random instants, many times, restarting
each time; the files on disk are whole after every kill, and the final run holds every cell
exactly once, each measured once to completion."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from .conftest import plan_cells, run_entrypoint, start_entrypoint, write_config

ROUNDS = 8  # kills per signal, at most
# A cell of the sleep model takes a known ~1.3 s (4 generations of 6 tokens at 50 ms), so twelve
# of them outlast several kills; the server start (~3 s) comes on top of every invocation.
SLOW = {
    "model": "synthetic:sleep",
    "attn_implementation": "eager",
    "model_config": {"prefill_sleep_s": 0.05, "decode_sleep_s": 0.05},
    "batch_size": list(range(1, 13)),
}


def _runs(output: Path) -> list[Path]:
    if not output.exists():
        return []
    return sorted(p for p in output.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_whole(output: Path, context: str) -> None:
    """Every result file parses: an atomic write leaves the old file or the new one, never half."""
    for run in _runs(output):
        if (run / "run.json").exists():
            json.loads((run / "run.json").read_text())
        for path in (run / "cells").glob("*.json") if (run / "cells").exists() else []:
            rec = json.loads(path.read_text())
            assert rec["cell_id"] == path.stem, context
        if (run / "summary.jsonl").exists():
            for line in (run / "summary.jsonl").read_text().splitlines():
                json.loads(line)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_random_kills_then_restarts_yield_every_cell_once(tmp_path, sig):
    seed = int(os.environ.get("TFBENCH_TEST_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    context = f"seed={seed} (rerun with TFBENCH_TEST_SEED={seed})"
    # Attempts lost to SIGKILL are charged; allow enough that the run can always finish.
    config = write_config(tmp_path, **SLOW, max_attempts=ROUNDS + 2)
    cells = [c["cell_id"] for c in plan_cells(config)]
    output = tmp_path / "out"
    outcomes = []
    for _ in range(ROUNDS):
        runs = _runs(output)
        if runs and json.loads((runs[0] / "run.json").read_text()).get("status") == "finished":
            break  # finished between kills; a further start would begin a new run
        proc = start_entrypoint(config, output)
        time.sleep(rng.uniform(0.2, 6.0))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        outcomes.append(proc.returncode)
        assert "Traceback" not in stderr, f"{context}\n{stderr}"
        if sig == signal.SIGTERM:
            assert proc.returncode in (0, 143), f"{context}\n{stderr}"
        _check_whole(output, context)
    final = run_entrypoint(config, output)
    assert final.returncode == 0, f"{context}\n{final.stderr}"
    runs = _runs(output)
    assert len(runs) == 1, f"{context}: {runs}"
    run = runs[0]
    records = {p.stem: json.loads(p.read_text()) for p in (run / "cells").glob("*.json")}
    assert sorted(records) == sorted(cells), context
    for rec in records.values():
        assert rec["status"] == "ok", f"{context}: {rec}"
        earlier = [a["status"] for a in rec["attempts"]]
        assert "ok" not in earlier, f"{context}: a finished cell ran again: {rec['cell_id']} {earlier}"
        assert set(earlier) <= {"interrupted", "lost"}, f"{context}: {earlier}"
        assert rec["attempt"] == len(earlier) + 1
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["counts"] == {"ok": len(cells), "not_run": 0}, context
    rows = [json.loads(line)["cell_id"] for line in (run / "summary.jsonl").read_text().splitlines()]
    assert rows == cells, context
    assert not list(run.rglob("*.tmp")), context
    assert not (run / "work").exists(), context
    assert not list(output.glob(".claim-*")), context
    # Most kills really cut a run short, or this test proved little.
    assert len(meta["invocations"]) >= 4, f"{context}: {meta['invocations']}"
    if sig == signal.SIGTERM:
        assert outcomes.count(143) >= 3, f"{context}: {outcomes}"
