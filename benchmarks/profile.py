"""What `profile` costs a cell's timed numbers, and what a trace weighs (run by `make bench`).

The embedded demo matrix (a small synthetic Llama on the CPU, eager and sdpa, b1 and b4), run
as a user runs it, alternately without and with `profile: N`, `--rounds` times each. For each
cell: the e2e p50 of both kinds (median over the rounds) and their ratio, which should be 1
within the noise, since the profiled call comes after the last timed run; the gzipped trace's
size; and whether the cell's output matched its eager reference. Figures go to --json (default
benchmarks/results/profile.json) and print as the table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import machine  # noqa: E402

from tests.conftest import clean_env, run_entrypoint  # noqa: E402

DEMO = ROOT / "bench" / "default_config.yaml"


def _cells(run: Path) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in (run / "cells").glob("*.json")]
    return {r["cell"]["name"]: r for r in records}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens of the profiled call")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "profile.json")
    args = parser.parse_args()
    e2e: dict[str, dict[str, list[float]]] = {}
    trace_bytes: dict[str, list[int]] = {}
    agreement: dict[str, str] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"  # a copy: the run's working directory is the config's
        config.write_text(DEMO.read_text())
        for r in range(args.rounds):
            for kind in ("plain", "profiled"):  # alternate, so that the machine's drift hits both
                env = clean_env(TFBENCH_RUN_ID=f"{kind}-{r}")
                if kind == "profiled":
                    env["TFBENCH_PROFILE"] = str(args.tokens)
                out = Path(tmp) / "results"
                proc = run_entrypoint(config, out, env=env, timeout=1800)
                if proc.returncode != 0:
                    raise SystemExit(f"the {kind} run failed:\n{proc.stderr}")
                run = out / f"{kind}-{r}"
                for name, rec in _cells(run).items():
                    e2e.setdefault(name, {"plain": [], "profiled": []})[kind].append(
                        rec["stats"]["e2e_latency"]["p50"]
                    )
                    if kind == "profiled":
                        trace = run / "traces" / f"{rec['cell_id']}.json.gz"
                        trace_bytes.setdefault(name, []).append(trace.stat().st_size if trace.exists() else 0)
                rows = [json.loads(line) for line in (run / "summary.jsonl").read_text().splitlines()]
                for row in rows:
                    rate, at = row.get("agreement_match_rate"), row.get("agreement_diverges_at")
                    agreement[row["name"]] = (
                        "-"
                        if rate is None
                        else f"match {rate:.2f}" + (f", diverges at {at}" if at is not None else "")
                    )
                print(
                    f"  round {r + 1}/{args.rounds} {kind}: {time.perf_counter() - t0:.0f} s", file=sys.stderr
                )
    cells = {
        name: {
            "plain_p50_s": statistics.median(v["plain"]),
            "profiled_p50_s": statistics.median(v["profiled"]),
            "ratio": statistics.median(v["profiled"]) / statistics.median(v["plain"]),
            "plain_runs_s": v["plain"],
            "profiled_runs_s": v["profiled"],
            "trace_bytes": trace_bytes.get(name, []),
            "agreement": agreement.get(name),
        }
        for name, v in sorted(e2e.items())
    }
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "rounds": args.rounds,
        "tokens": args.tokens,
        "cells": cells,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(
        f"## Profiling's cost ({figures['date']}, {figures['machine']}; {args.rounds} rounds, profile: {args.tokens})\n"
    )
    print("| cell | e2e p50 plain | e2e p50 profiled | ratio | trace (gzipped) | output |")
    print("|---|---|---|---|---|---|")
    for name, c in cells.items():
        size = statistics.median(c["trace_bytes"]) / 2**20 if c["trace_bytes"] else 0.0
        print(
            f"| {name} | {c['plain_p50_s'] * 1e3:.1f} ms | {c['profiled_p50_s'] * 1e3:.1f} ms | {c['ratio']:.3f} "
            f"| {size:.2f} MiB | {c['agreement']} |"
        )


if __name__ == "__main__":
    main()
