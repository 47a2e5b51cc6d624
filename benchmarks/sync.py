"""Runs synced to a durable sink (sync_to), on a real S3-compatible server (moto on 127.0.0.1):
what syncing costs between cells, and a kill loop in which every restart is a new, empty machine
(run by `make bench`).

(a) Cost: the same matrix of sleep-model cells with and without a sink, alternately; the time
    between the end of one cell and the start of the next (from the records), mean over the gaps.
(b) Kill loop: start the run on an empty directory (a replacement VM), kill it (SIGKILL or
    SIGTERM) at a random instant, delete the directory, start again. Every finished run in the
    sink is checked: each planned cell exactly one record, ok, measured to completion once
    (earlier attempts only interrupted or lost), summary whole. Figures go to --json (default
    benchmarks/results/sync.json), which RELIABILITY.md and BENCHMARKS.md quote.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import machine  # noqa: E402

from tests.conftest import TINY, clean_env, plan_cells, run_entrypoint, start_entrypoint, write_config  # noqa: E402
from tests.kill_loop import DELAY_S, SLOW  # noqa: E402
from tests.s3_server import S3Server, s3_server  # noqa: E402

LEASE_S = "2"  # a killed machine's lease expires quickly, so that the next one need not wait long
FAST = {**TINY, "model": "synthetic:sleep", "attn_implementation": "eager", "batch_size": list(range(1, 13))}


def _gaps(run: Path) -> list[float]:
    records = [json.loads(p.read_text()) for p in (run / "cells").glob("*.json")]
    records.sort(key=lambda r: r["started_at"])
    times = [
        (datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in records
    ]
    return [(b[0] - a[1]).total_seconds() for a, b in zip(times, times[1:])]


def cost(s3: S3Server, work: Path, repeats: int) -> dict[str, Any]:
    config = write_config(work, **FAST)
    gaps: dict[str, list[float]] = {"none": [], "s3": []}
    for i in range(repeats):
        for kind in ("none", "s3"):  # alternate, so that drift of the machine hits both
            out = work / f"cost-{kind}-{i}"
            env = s3.subprocess_env(clean_env(TFBENCH_RUN_ID="cost"))
            if kind == "s3":
                env["TFBENCH_SYNC_TO"] = s3.url(f"cost-{i}")
            proc = run_entrypoint(config, out, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"the {kind} run failed:\n{proc.stderr}")
            gaps[kind] += _gaps(out / "cost")
    none, synced = statistics.fmean(gaps["none"]), statistics.fmean(gaps["s3"])
    return {
        "cells": len(FAST["batch_size"]),
        "repeats": repeats,
        "gap_mean_s": {"none": none, "s3": synced},
        "gap_median_s": {k: statistics.median(v) for k, v in gaps.items()},
        "added_per_cell_s": synced - none,
    }


def _sink_run(s3: S3Server, prefix: str, run_id: str) -> dict[str, Any]:
    client = s3.client()
    objects: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3.bucket, Prefix=f"{prefix}/{run_id}/"
    ):
        for item in page.get("Contents", []):
            key = item["Key"]
            if "/lease/" not in key:
                objects[key.split(f"{run_id}/", 1)[1]] = client.get_object(Bucket=s3.bucket, Key=key)[
                    "Body"
                ].read()
    return objects


def _check(objects: dict[str, bytes], cells: list[str], context: str) -> dict[str, int]:
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise SystemExit(f"{context}: {what}")

    records = {
        n[len("cells/") : -len(".json")]: json.loads(d) for n, d in objects.items() if n.startswith("cells/")
    }
    need(sorted(records) == sorted(cells), f"cells in the sink {sorted(records)} != planned {sorted(cells)}")
    counts: Counter[str] = Counter()
    for rec in records.values():
        need(rec["status"] == "ok", f"{rec['cell_id']} is {rec['status']}")
        earlier = [a["status"] for a in rec.get("attempts", [])]
        need(set(earlier) <= {"interrupted", "lost"}, f"{rec['cell_id']}: earlier attempts {earlier}")
        counts.update(earlier)
    meta = json.loads(objects["run.json"])
    need(meta["status"] == "finished", f"run status {meta['status']}")
    rows = [json.loads(line)["cell_id"] for line in objects["summary.jsonl"].decode().splitlines()]
    need(
        sorted(rows) == sorted(cells) and len(rows) == len(cells),
        "summary.jsonl does not list every cell once",
    )
    return {"cells": len(records), "lost": counts["lost"], "interrupted": counts["interrupted"]}


def kill_loop(s3: S3Server, work: Path, trials: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    config = write_config(work, **SLOW, max_attempts=trials + 2)
    cells = [c["cell_id"] for c in plan_cells(config)]
    outcome: dict[str, Any] = {"seed": seed, "trials": 0, "exit_codes": Counter(), "runs_checked": 0}
    outcome.update(cells_checked=0, lost_attempts=0, interrupted_attempts=0, kept_twice=0, restored=0)
    run_no = 0

    def env(run_id: str) -> dict[str, str]:
        return s3.subprocess_env(
            clean_env(TFBENCH_RUN_ID=run_id, TFBENCH_SYNC_TO=s3.url("loop"), TFBENCH_SYNC_LEASE_S=LEASE_S)
        )

    def settle(run_id: str, context: str) -> None:
        checked = _check(_sink_run(s3, "loop", run_id), cells, context)
        outcome["runs_checked"] += 1
        outcome["cells_checked"] += checked["cells"]
        outcome["lost_attempts"] += checked["lost"]
        outcome["interrupted_attempts"] += checked["interrupted"]

    def finished(run_id: str) -> bool:
        data = _sink_run(s3, "loop", run_id).get("run.json")
        return data is not None and json.loads(data)["status"] == "finished"

    for trial in range(trials):
        run_id = f"loop-{run_no}"
        context = f"seed={seed} trial={trial}"
        if finished(run_id):
            settle(run_id, context)
            run_no += 1
            run_id = f"loop-{run_no}"
        vm = work / f"vm-{trial}"  # a new machine: nothing on its disk
        sig = rng.choice((signal.SIGTERM, signal.SIGKILL))
        proc = start_entrypoint(config, vm, env=env(run_id))
        time.sleep(rng.uniform(*DELAY_S))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        outcome["trials"] += 1
        outcome["exit_codes"][proc.returncode] += 1
        outcome["kept_twice"] += stderr.count("the sink already holds")
        outcome["restored"] += "restored run" in stderr
        if "Traceback" in stderr:
            raise SystemExit(f"{context}: a traceback\n{stderr}")
        shutil.rmtree(vm, ignore_errors=True)
        print(f"  {trial + 1}/{trials} trials", file=sys.stderr)
    run_id = f"loop-{run_no}"
    for _ in range(3):
        if finished(run_id):
            break
        final = run_entrypoint(config, work / "vm-final", env=env(run_id))
        shutil.rmtree(work / "vm-final", ignore_errors=True)
        if final.returncode != 0:
            raise SystemExit(f"the final restart exited {final.returncode}\n{final.stderr}")
    settle(run_id, "after the last trial")
    outcome["exit_codes"] = {str(k): v for k, v in sorted(outcome["exit_codes"].items())}
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "sync.json")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, s3_server() as s3:
        figures = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "cost": cost(s3, Path(tmp), args.repeats),
            "kill_loop": {**kill_loop(s3, Path(tmp), args.trials, args.seed), "delay_s": list(DELAY_S)},
        }
    figures["elapsed_s"] = time.perf_counter() - t0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    c, k = figures["cost"], figures["kill_loop"]
    print(f"## Syncing to S3 ({figures['date']}, {figures['machine']})\n")
    print(
        f"gap between cells: {c['gap_mean_s']['none'] * 1e3:.0f} ms without a sink, "
        f"{c['gap_mean_s']['s3'] * 1e3:.0f} ms with one: {c['added_per_cell_s'] * 1e3:+.0f} ms per cell (goal < 200 ms)"
    )
    print(
        f"kill loop: {k['trials']} kills on empty machines, {k['runs_checked']} runs and {k['cells_checked']} cells "
        f"checked, exit codes {k['exit_codes']}, {k['restored']} restores, {k['kept_twice']} cells measured twice"
    )


if __name__ == "__main__":
    main()
