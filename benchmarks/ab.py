"""How far `tfbench ab`'s verdicts can be trusted on this machine: false alarms when both sides are
the same code, and a planted slowdown found.

    python benchmarks/ab.py [--pairs 10] [--planted 5] [--delay-ms 0.5]

- A/A through ab: BASE and NEW are two copies of the installed transformers (every file linked,
  tests/transformers_copies.py); the embedded demo (4 cells, default `processes`) measured by
  `tfbench ab` `--pairs` times, each pair judged as ab judges it (no drift term: one invocation).
  A regression or improvement is a false alarm.
- Planted slowdown: NEW's Llama forward sleeps `--delay-ms` first (each decode step and the
  prefill; 2 ms is about 40% of the demo's smallest step on this VM); `--planted` pairs, every
  cell must say regression.
- The minimum detectable effect ab reaches on the demo's cells (median over the A/A verdicts),
  against what `tfbench compare` reaches on the same data taken as separate runs (BASE of one
  pair against NEW of another, with the drift it assumes without a calibration).

Writes benchmarks/results/ab.json and prints the table BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.transformers_copies import transformers_copy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ab.json"
METRICS = ("e2e_latency", "ttft", "tpot")


def tfbench(*args: str) -> dict[str, Any]:
    """`tfbench ARGS --format json` in a clean environment; its JSON comparison (exit 0 or 1)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TFBENCH_")}
    environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", *args, "--format", "json"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode not in (0, 1):
        raise SystemExit(f"tfbench {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def ab(base: Path, new: Path, output: Path, run_id: str) -> tuple[dict[str, Any], float]:
    """One `tfbench ab` of the demo; its comparison and wall time."""
    t = time.perf_counter()
    data = tfbench(
        "ab", str(base), str(new), "--output", str(output), "--run-id", run_id, "--log-format", "json"
    )
    return data, time.perf_counter() - t


def compare(base: Path, new: Path) -> dict[str, Any]:
    return tfbench("compare", str(base), str(new))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10, help="A/A pairs (10 x 4 cells = 40 verdicts)")
    parser.add_argument("--planted", type=int, default=3, help="pairs with the planted slowdown")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="the planted sleep per forward")
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tfbench-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        same_a = transformers_copy(work / "src" / "a")
        same_b = transformers_copy(work / "src" / "b")
        slower = transformers_copy(work / "src" / "slower", delay_s=args.delay_ms / 1000)
        aa_verdicts, mdes, walls = [], {m: [] for m in METRICS}, []
        for i in range(args.pairs):
            data, wall = ab(same_a, same_b, work / "aa", f"aa-{i}")
            walls.append(wall)
            for cell in data["cells"]:
                aa_verdicts.append(cell["verdict"])
                for m in METRICS:
                    if (cell["metrics"].get(m) or {}).get("mde") is not None:
                        mdes[m].append(cell["metrics"][m]["mde"])
        separate = {m: [] for m in METRICS}
        for i in range(args.pairs - 1):
            data = compare(work / "aa" / f"aa-{i}-base", work / "aa" / f"aa-{i + 1}-new")
            for cell in data["cells"]:
                for m in METRICS:
                    if (cell["metrics"].get(m) or {}).get("mde") is not None:
                        separate[m].append(cell["metrics"][m]["mde"])
        found, total, ratios = 0, 0, {m: [] for m in METRICS}
        for i in range(args.planted):
            data, _ = ab(same_a, slower, work / "planted", f"planted-{i}")
            for cell in data["cells"]:
                total += 1
                found += cell["verdict"] == "regression"
                for m in METRICS:
                    ratios[m].append(cell["metrics"][m]["ratio"])
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    alarms = sum(v in ("regression", "improvement") for v in aa_verdicts)
    result = {
        "machine": f"{os.cpu_count()} cores",
        "aa": {
            "pairs": args.pairs,
            "verdicts": len(aa_verdicts),
            "false_alarms": alarms,
            "rate": alarms / len(aa_verdicts) if aa_verdicts else None,
            "counts": {v: aa_verdicts.count(v) for v in sorted(set(aa_verdicts))},
            "mde_median": {m: statistics.median(v) if v else None for m, v in mdes.items()},
            "mde_median_as_separate_runs": {
                m: statistics.median(v) if v else None for m, v in separate.items()
            },
            "wall_s": walls,
        },
        "planted": {
            "delay_ms": args.delay_ms,
            "pairs": args.planted,
            "comparisons": total,
            "cell_regressions": found,
            "ratio_median": {m: statistics.median(v) if v else None for m, v in ratios.items()},
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    a, p = result["aa"], result["planted"]
    print("| check | measured | goal |")
    print("|---|---|---|")
    print(
        f"| A/A through ab (two copies of one source) | {a['false_alarms']} of {a['verdicts']} ({a['rate']:.1%}) {a['counts']} | <= 5% |"
    )
    slowed = ", ".join(f"{m} x{v:.3f}" for m, v in p["ratio_median"].items() if v is not None)
    print(
        f"| planted slowdown ({p['delay_ms']:g} ms per forward; median ratios {slowed}) found "
        f"| {p['cell_regressions']} of {p['comparisons']} | found |"
    )
    mde = ", ".join(f"{m} {v:.1%}" for m, v in a["mde_median"].items() if v is not None)
    print(f"| minimum detectable effect through ab on the demo's cells (median) | {mde} | |")
    sep = ", ".join(f"{m} {v:.1%}" for m, v in a["mde_median_as_separate_runs"].items() if v is not None)
    print(f"| the same, the runs compared as separate runs (assumed drift) | {sep} | |")
    print(f"| wall time of one ab of the demo (median) | {statistics.median(a['wall_s']):.1f} s | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
