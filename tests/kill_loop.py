"""The runner killed at random instants and restarted, over and over (tests/test_kill_resume.py
runs a short loop; `make bench` runs benchmarks/kill_loop.py, a long one).

One trial: start `tfbench run` on a run in progress, kill it (SIGTERM or SIGKILL) after a random
delay, check that every file on disk is whole. When a run finishes between kills, it is checked
(every planned cell exactly once, each measured to completion once, nothing half-written) and
the next trials start a new run in a new output directory. After the last trial, the run in
progress is completed by plain restarts and checked the same way.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import plan_cells, run_entrypoint, start_entrypoint, write_config

# A cell of the sleep model takes a known ~1.3 s (4 generations of 6 tokens at 50 ms); the worker
# server start (~3.5 s) comes on top of every start. Six cells outlast several kills, and a run
# still finishes every ten trials or so, to be checked whole.
SLOW = {
    "model": "synthetic:sleep",
    "attn_implementation": "eager",
    "model_config": {"prefill_sleep_s": 0.05, "decode_sleep_s": 0.05},
    "batch_size": list(range(1, 7)),
}
# Kill instants: from inside the interpreter's start-up to deep into the cells.
DELAY_S = (0.2, 8.0)


class LoopFailure(AssertionError):
    pass


@dataclass
class Outcome:
    """What a series of kill trials did and cost."""

    seed: int
    trials: int = 0
    exit_codes: Counter = field(default_factory=Counter)
    runs_completed: int = 0
    cells_checked: int = 0
    restarts_to_finish: int = 0  # plain restarts needed after the last kill
    lost_attempts: int = 0  # attempts cut short by a SIGKILL, charged and run again
    interrupted_attempts: int = 0  # attempts stopped by SIGTERM, not charged, run again
    invocations: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "exit_codes": {str(k): v for k, v in sorted(self.exit_codes.items())}}


def _runs(output: Path) -> list[Path]:
    if not output.exists():
        return []
    return sorted(p for p in output.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_whole(output: Path, context: str) -> None:
    """Every result file parses: an atomic write leaves the old file or the new one, never half."""
    for run in _runs(output):
        if (run / "run.json").exists():
            json.loads((run / "run.json").read_text())
        for path in (run / "cells").glob("*.json") if (run / "cells").exists() else []:
            rec = json.loads(path.read_text())
            if rec["cell_id"] != path.stem:
                raise LoopFailure(f"{context}: {path} holds cell {rec['cell_id']}")
        if (run / "summary.jsonl").exists():
            for line in (run / "summary.jsonl").read_text().splitlines():
                json.loads(line)


def _finished(output: Path) -> bool:
    runs = _runs(output)
    return bool(runs) and json.loads((runs[0] / "run.json").read_text()).get("status") == "finished"


def check_finished_run(output: Path, cells: list[str], context: str) -> dict[str, Any]:
    """One run in `output`, finished, every planned cell exactly once and measured once to completion."""

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise LoopFailure(f"{context}: {what}")

    runs = _runs(output)
    need(len(runs) == 1, f"expected one run, found {runs}")
    run = runs[0]
    records = {p.stem: json.loads(p.read_text()) for p in (run / "cells").glob("*.json")}
    need(sorted(records) == sorted(cells), f"cells {sorted(records)} != plan {sorted(cells)}")
    for rec in records.values():
        need(rec["status"] == "ok", f"{rec['cell_id']} ended {rec['status']}: {rec.get('reason')}")
        earlier = [a["status"] for a in rec["attempts"]]
        need("ok" not in earlier, f"a finished cell ran again: {rec['cell_id']} {earlier}")
        need(set(earlier) <= {"interrupted", "lost"}, f"{rec['cell_id']}: earlier attempts {earlier}")
        need(rec["attempt"] == len(earlier) + 1, f"{rec['cell_id']}: attempt numbering")
    meta = json.loads((run / "run.json").read_text())
    need(meta["status"] == "finished", f"run status {meta['status']}")
    need(meta["counts"] == {"ok": len(cells), "not_run": 0}, f"counts {meta['counts']}")
    rows = [json.loads(line)["cell_id"] for line in (run / "summary.jsonl").read_text().splitlines()]
    need(rows == cells, "summary.jsonl does not list every cell once, in plan order")
    need(not list(run.rglob("*.tmp")), "temporary files left")
    need(not (run / "work").exists(), "scratch left")
    need(not list(output.glob(".claim-*")), "a half-claimed run left")
    return {"records": records, "meta": meta}


def kill_trials(
    workdir: Path, trials: int, signals: tuple[int, ...], seed: int | None = None, progress: Any = None
) -> Outcome:
    """Run `trials` kill-and-restart trials; raise LoopFailure on anything lost or half-written."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    outcome = Outcome(seed=seed)
    config = write_config(workdir, **SLOW, max_attempts=trials + 2)
    cells = [c["cell_id"] for c in plan_cells(config)]
    run_no = 0
    output = workdir / f"out{run_no}"

    def settle(output: Path, context: str) -> None:
        checked = check_finished_run(output, cells, context)
        outcome.runs_completed += 1
        outcome.cells_checked += len(checked["records"])
        outcome.invocations += len(checked["meta"]["invocations"])
        for rec in checked["records"].values():
            statuses = Counter(a["status"] for a in rec["attempts"])
            outcome.lost_attempts += statuses["lost"]
            outcome.interrupted_attempts += statuses["interrupted"]

    for trial in range(trials):
        context = f"seed={seed} trial={trial} (rerun with TFBENCH_TEST_SEED={seed})"
        if _finished(output):  # finished between kills: check it, then start a new run
            settle(output, context)
            run_no += 1
            output = workdir / f"out{run_no}"
        sig = rng.choice(signals)
        proc = start_entrypoint(config, output)
        time.sleep(rng.uniform(*DELAY_S))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        outcome.trials += 1
        outcome.exit_codes[proc.returncode] += 1
        if "Traceback" in stderr:
            raise LoopFailure(f"{context}: a traceback\n{stderr}")
        if sig == signal.SIGTERM and proc.returncode not in (0, 143):
            raise LoopFailure(f"{context}: SIGTERM gave exit {proc.returncode}\n{stderr}")
        check_whole(output, context)
        if progress:
            progress(outcome)
    context = f"seed={seed} after the last trial (rerun with TFBENCH_TEST_SEED={seed})"
    for _ in range(3):
        if _finished(output):
            break
        final = run_entrypoint(config, output)
        outcome.restarts_to_finish += 1
        if final.returncode != 0:
            raise LoopFailure(f"{context}: restart exited {final.returncode}\n{final.stderr}")
    settle(output, context)
    return outcome
