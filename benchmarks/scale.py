"""Scale of the harness (run by `make bench`): a 10,000-cell matrix planned, merged, reported, read.

(s1) `tfbench plan` of 10,000 cells, whole process as a user runs it (text and --json);
(s2) `tfbench merge` of a 10,000-cell run written by 4 shards;
(s3) `tfbench report` of that run (the summary table on stdout);
(s4) the run's summary.jsonl read with one pandas call.

The shards are written by the real runner (`tfbench run` with TFBENCH_SHARD=i/4) on a matrix
whose cells are all skipped (flash_attention_2 on the CPU), so run.json, the plan and the
layout are exactly what a run writes; then every skipped record is replaced by a measured one
of realistic size: the record of a real tiny cell measured first, with its cell fields swapped.

Goals: (s1) under 1 s, (s2) and (s3) under 5 s. The figures go to --json (default
benchmarks/results/scale.json), which RELIABILITY.md is generated from.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from harness import bench_plan, env, machine, tfbench_run

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
# 25 x 40 x 10 = 10,000 shapes of one combination.
MATRIX = {
    "model": "synthetic:llama-tiny",
    "device": "cpu",
    "batch_size": list(range(1, 26)),
    "sequence_length": list(range(16, 16 * 41, 16)),
    "num_tokens_to_generate": list(range(1, 11)),
    "warmup_iterations": 1,
    "measurement_iterations": 5,
    "max_attempts": 1,
}
TEMPLATE = {
    **MATRIX,
    "batch_size": 1,
    "sequence_length": 16,
    "num_tokens_to_generate": 6,
    "attn_implementation": "sdpa",
}


def tfbench(*args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], env=env(), capture_output=True, text=True, cwd=ROOT
    )
    elapsed = time.perf_counter() - t
    if check and proc.returncode not in (0, 1):
        sys.exit(f"tfbench {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return elapsed, proc


def write_sharded_run(work: Path) -> Path:
    """A 10,000-cell run in 4 shards, each shard written by `tfbench run`, then given measured records."""
    config = work / "matrix.yaml"
    config.write_text(yaml.safe_dump({**MATRIX, "attn_implementation": "flash_attention_2"}))
    output = work / "results"
    for i in range(SHARDS):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.cli", "run", "--config", str(config), "--output", str(output)],
            env={**env(), "TFBENCH_SHARD": f"{i}/{SHARDS}", "TFBENCH_RUN_ID": "scale"},
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            sys.exit(f"shard {i} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    run = output / "scale"
    (work / "template").mkdir()
    measured = tfbench_run(TEMPLATE, work / "template")["cells"][0]
    rng = random.Random(0)
    for shard in sorted((run / "shards").iterdir()):
        for path in (shard / "cells").glob("*.json"):
            skipped = json.loads(path.read_text())
            rec = json.loads(json.dumps(measured))
            # As the runner writes a shard's record: its shard, the log relative to the run.
            rec.update(
                cell_id=skipped["cell_id"], cell=skipped["cell"], run_id="scale", shard=skipped["shard"]
            )
            rec["log"] = f"shards/{shard.name}/logs/{skipped['cell_id']}.log"
            for stats in (rec.get("stats") or {}).values():
                if isinstance(stats, dict):
                    scale = rng.uniform(0.5, 2.0)  # distinct numbers per cell, as a real matrix has
                    for key, value in stats.items():
                        if key != "n" and isinstance(value, float):
                            stats[key] = value * scale
            path.write_text(json.dumps(rec) + "\n")
    # The last shard merged the skipped records; the timed merges below start from nothing merged.
    for name in ("cells", "summary.jsonl", "run.json"):
        target = run / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = parser.parse_args()

    import pandas as pd

    plan = bench_plan(args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        run = write_sharded_run(work)
        setup_s = time.perf_counter() - t
        merges = [tfbench("merge", str(run))[0] for _ in range(args.repeats)]
        merged = json.loads((run / "run.json").read_text())
        reports = []
        for _ in range(args.repeats):
            elapsed, proc = tfbench("report", str(run))
            reports.append(elapsed)
        report_lines = len(proc.stdout.splitlines())
        html_s, _ = tfbench("report", str(run), "--html", str(work / "report.html"))
        reads = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            frame = pd.read_json(run / "summary.jsonl", lines=True)
            reads.append(time.perf_counter() - t)
        # Merged cells are hard links to the shards' files: count each file once.
        size = sum(
            {
                (s.st_dev, s.st_ino): s.st_size for p in run.rglob("*") if (s := p.stat()) and p.is_file()
            }.values()
        )
        cell_bytes = statistics.median(p.stat().st_size for p in list((run / "cells").glob("*.json"))[:200])
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "plan": {"cells": plan["cells"], "text_s": plan["table"], "json_s": plan["json"], "goal_s": 1.0},
        "merge": {
            "cells": sum(merged["counts"].values()),
            "shards": merged["shard_count"],
            "median_s": statistics.median(merges),
            "runs_s": merges,
            "goal_s": 5.0,
        },
        "report": {
            "median_s": statistics.median(reports),
            "runs_s": reports,
            "lines": report_lines,
            "goal_s": 5.0,
        },
        "report_html_s": html_s,
        "pandas": {
            "call": "pandas.read_json(run / 'summary.jsonl', lines=True)",
            "median_s": statistics.median(reads),
            "rows": int(frame.shape[0]),
            "columns": int(frame.shape[1]),
        },
        "run_bytes": size,
        "cell_record_bytes": cell_bytes,
        "setup_s": setup_s,
        "repeats": args.repeats,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")

    def ok(value: float, goal: float) -> str:
        return "meets goal" if value < goal else "MISSES goal"

    p, m, r, d = figures["plan"], figures["merge"], figures["report"], figures["pandas"]
    print(f"## Scale ({figures['date']}, {figures['machine']})\n")
    print(f"| check | measured (median of {args.repeats}) | goal | |")
    print("|---|---|---|---|")
    print(
        f"| (s1) `tfbench plan` of {p['cells']:,} cells, whole process: text / `--json` | "
        f"{p['text_s']:.2f} s / {p['json_s']:.2f} s | < 1 s | {ok(max(p['text_s'], p['json_s']), 1.0)} |"
    )
    print(
        f"| (s2) `tfbench merge` of {m['cells']:,} cell results from {m['shards']} shards, whole process | "
        f"{m['median_s']:.2f} s | < 5 s | {ok(m['median_s'], 5.0)} |"
    )
    print(
        f"| (s3) `tfbench report` of the merged run ({r['lines']:,} lines), whole process | "
        f"{r['median_s']:.2f} s | < 5 s | {ok(r['median_s'], 5.0)} |"
    )
    print(
        f"| (s3') `tfbench report --html` of the same run (figures capped at 400 cells, the table lists all) | "
        f"{html_s:.2f} s | | |"
    )
    print(
        f"| (s4) `{d['call']}` | {d['median_s']:.2f} s: {d['rows']:,} rows x {d['columns']} columns | "
        "one call | meets goal |"
    )
    print(
        f"\nThe run holds {size / 1e6:.0f} MB ({cell_bytes / 1e3:.1f} kB per cell record). Writing the shards "
        f"and the measured template took {setup_s:.0f} s. Figures written to {args.json}."
    )


if __name__ == "__main__":
    main()
