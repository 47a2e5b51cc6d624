"""The runner killed at random instants and restarted, many times (run by `make bench`).

The long version of tests/test_kill_resume.py: the same loop (tests/kill_loop.py), with SIGTERM
and SIGKILL chosen at random per trial. Every run the loop finishes is checked: every planned
cell exactly once, each measured to completion once, no file half-written. Figures go to --json
(default benchmarks/results/kill_loop.json), which RELIABILITY.md is generated from.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import machine  # noqa: E402

from tests.kill_loop import DELAY_S, SLOW, kill_trials  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "kill_loop.json")
    args = parser.parse_args()

    t0 = time.perf_counter()

    def progress(outcome) -> None:
        if outcome.trials % 10 == 0:
            print(
                f"  {outcome.trials}/{args.trials} trials, {time.perf_counter() - t0:.0f} s", file=sys.stderr
            )

    with tempfile.TemporaryDirectory() as tmp:
        outcome = kill_trials(Path(tmp), args.trials, (signal.SIGTERM, signal.SIGKILL), args.seed, progress)
    elapsed = time.perf_counter() - t0
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "elapsed_s": elapsed,
        "delay_s": list(DELAY_S),
        "cells_per_run": len(SLOW["batch_size"]),
        **outcome.as_dict(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    codes = ", ".join(f"{k}: {v}" for k, v in figures["exit_codes"].items())
    print(f"## Runner killed at random and restarted ({figures['date']}, {figures['machine']})\n")
    print(
        "| trials | runs finished and checked | cells checked | exit codes of the killed runner | attempts re-run | lost |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {outcome.trials} (seed {outcome.seed}) | {outcome.runs_completed} | {outcome.cells_checked} | {codes} | "
        f"{outcome.lost_attempts} cut by SIGKILL, {outcome.interrupted_attempts} stopped by SIGTERM | nothing |"
    )
    print(f"\n(took {elapsed:.0f} s; figures written to {args.json})")


if __name__ == "__main__":
    main()
