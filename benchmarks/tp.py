"""Tensor-parallel cells on the CPU: tp_size 2 against tp_size 1 (run by `make bench`).

The same tiny synthetic Llama cell, run as a user runs it, with tp_size 1 (one worker process) and
tp_size 2 (two gloo ranks started by torch.distributed's elastic launcher from the worker),
`--rounds` times. For each: its status, e2e/ttft/tpot p50, peak memory, and for tp2 the group's
start-up (from the launch to both ranks through their first barrier) and whether it generated the
same tokens as tp1. On a CPU with two cores this measures the launcher and the collectives' cost,
not a speed-up: the figures say what a tensor-parallel cell costs the harness. Figures go to --json
(default benchmarks/results/tp.json) and print as the table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import machine  # noqa: E402

from tests.conftest import clean_env, run_entrypoint  # noqa: E402

CONFIG = {
    "model": "synthetic:llama-tiny",
    "device": "cpu",
    "batch_size": 1,
    "sequence_length": 32,
    "num_tokens_to_generate": 16,
    "warmup_iterations": 2,
    "measurement_iterations": 10,
    "processes": 1,
    "tp_size": [1, 2],
    "max_attempts": 1,
    "cell_timeout_s": 300,
}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "tp.json")
    args = parser.parse_args()
    loads = [load_average()]
    by_tp: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(CONFIG))
        for r in range(args.rounds):
            out = Path(tmp) / "results"
            proc = run_entrypoint(config, out, env=clean_env(TFBENCH_RUN_ID=f"tp-{r}"), timeout=1800)
            for path in (out / f"tp-{r}" / "cells").glob("*.json"):
                rec = json.loads(path.read_text())
                by_tp[rec["cell"].get("tp_size", 1)].append(rec)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
            loads.append(load_average())
            print(f"  round {r + 1}/{args.rounds}: rc {proc.returncode}", file=sys.stderr)

    def p50(recs: list[dict], metric: str) -> float | None:
        values = [
            (rec.get("stats") or {}).get(metric, {}).get("p50") for rec in recs if rec["status"] == "ok"
        ]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    cells = {}
    for tp, recs in by_tp.items():
        groups = [rec["tensor_parallel"] for rec in recs if rec.get("tensor_parallel")]
        cells[f"tp{tp}"] = {
            "name": recs[0]["cell"]["name"] if recs else None,
            "statuses": [rec["status"] for rec in recs],
            "e2e_p50_s": p50(recs, "e2e_latency"),
            "ttft_p50_s": p50(recs, "ttft"),
            "tpot_p50_s": p50(recs, "tpot"),
            "e2e_p50_per_round_s": [
                (rec.get("stats") or {}).get("e2e_latency", {}).get("p50") for rec in recs
            ],
            "peak_bytes": [(rec.get("memory") or {}).get("peak_bytes") for rec in recs],
            "load_time_s": [rec.get("load_time_s") for rec in recs],
            "group_startup_s": [g["group_startup_s"] for g in groups],
            "group_s": [g["group_s"] for g in groups],
            "backend": groups[0]["backend"] if groups else None,
            "output_sha256": [(rec.get("output") or {}).get("sha256") for rec in recs],
        }
    one, two = cells["tp1"], cells["tp2"]
    same_tokens = bool(one["output_sha256"]) and set(one["output_sha256"]) == set(two["output_sha256"])
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "load_average_1_5_15": loads,
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "config": CONFIG,
        "cells": cells,
        "same_tokens": same_tokens,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.1f} ms"

    print(
        f"## Tensor-parallel cells on the CPU ({figures['date']}, {figures['machine']}; {args.rounds} rounds)\n"
    )
    print("| cell | status | e2e p50 | ttft p50 | tpot p50 | peak memory (largest rank) | group start-up |")
    print("|---|---|---|---|---|---|---|")
    for c in cells.values():
        peaks = [p for p in c["peak_bytes"] if p]
        startup = (
            f"{statistics.median(c['group_startup_s']):.2f} s (median of {len(c['group_startup_s'])})"
            if c["group_startup_s"]
            else "-"
        )
        print(
            f"| {c['name']} | {', '.join(c['statuses'])} | {ms(c['e2e_p50_s'])} | {ms(c['ttft_p50_s'])} "
            f"| {ms(c['tpot_p50_s'])} | {statistics.median(peaks) / 2**20:.0f} MiB | {startup} |"
        )
    print(f"\nsame tokens from tp1 and tp2: {same_tokens}; load average before and after each round: {loads}")


if __name__ == "__main__":
    main()
