"""How far compare's verdicts can be trusted on this machine: false alarms on A/A runs, power on a
planted 10% slowdown, the cost of replication, and the smallest change the demo's cells resolve.

    python benchmarks/verdicts.py [--runs 4] [--out DIR]

- A/A: the embedded demo (default `processes`) run `--runs` times, every pair compared with
  `tfbench compare` (the whole CLI), first with the drift the verdicts assume without a
  calibration, then with a calibration made by `tfbench calibrate` from 3 other runs of the same
  config. A verdict of regression or improvement on an A/A pair is a false alarm. "Before": the
  same runs made with one process per cell and judged as compare judged until now (a rank test on
  the timed runs of each side, p < 0.05 and beyond 5%).
- Power: a 4-cell matrix of the sleep preset; NEW runs plant a 10% slower decode step
  (TFBENCH_SLEEP_SCALE=1.1, the same cell ids). The machine is calibrated on 3 BASE runs first;
  then 5 BASE/NEW pairs give 20 cell comparisons, each of which must say regression.
- Cost: wall time of a demo run with the default processes against one process per cell.

Writes benchmarks/results/verdicts.json and prints the table BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
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

from ranktest import rank_test  # noqa: E402

from bench.analysis.compare import KEY_METRICS  # noqa: E402
from bench.results.store import open_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "verdicts.json"
SLEEP = {
    "model": "synthetic:sleep",
    "device": "cpu",
    "attn_implementation": "eager",
    "batch_size": [1, 2],
    "sequence_length": [8, 16],
    "num_tokens_to_generate": 12,
    "warmup_iterations": 1,
    "measurement_iterations": 8,
    "run_name": "sleep",
}


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("TFBENCH_")}
    out.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return out


def tfbench(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args],
        cwd=ROOT,
        env=env(**(extra or {})),
        capture_output=True,
        text=True,
        check=False,
    )


def run(
    output: Path, run_id: str, config: Path | None, *flags: str, extra: dict[str, str] | None = None
) -> float:
    """One `tfbench run`, its wall time; fails loudly if the run did not finish."""
    args = ["run", "--output", str(output), "--run-id", run_id, "--log-format", "json", *flags]
    if config is not None:
        args += ["--config", str(config)]
    t = time.perf_counter()
    proc = tfbench(*args, extra=extra)
    if proc.returncode != 0:
        raise SystemExit(f"run {run_id} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def compare(base: Path, new: Path, calibration: Path | None = None) -> dict[str, Any]:
    args = ["compare", str(base), str(new), "--format", "json"]
    if calibration is not None:
        args += ["--calibration", str(calibration)]
    proc = tfbench(*args)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"compare failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def verdicts(data: dict[str, Any]) -> list[str]:
    return [c["verdict"] for c in data["cells"]]


def old_rule(base: Path, new: Path, threshold: float = 0.05, alpha: float = 0.05) -> list[str]:
    """compare as it judged before: a rank test on each side's timed runs, p < alpha and beyond 5%."""
    b_run, n_run = open_run(base), open_run(new)
    out = []
    for cid, b in b_run.cells.items():
        n = n_run.cells.get(cid)
        if n is None or not (b.ok and n.ok):
            continue
        alarm = False
        for metric in KEY_METRICS:
            bs, ns = b.samples(metric), n.samples(metric)
            if len(bs) < 3 or len(ns) < 3:
                continue
            ratio = statistics.median(ns) / statistics.median(bs)
            if rank_test(bs, ns, alpha).p_value < alpha and abs(math.log(ratio)) > math.log1p(threshold):
                alarm = True
        out.append("alarm" if alarm else "quiet")
    return out


def calibrate(runs: list[Path], target: Path) -> None:
    proc = tfbench("calibrate", *map(str, runs), "--write", str(target))
    if proc.returncode != 0:
        raise SystemExit(f"calibrate failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout, file=sys.stderr)


def aa(work: Path, runs: int) -> dict[str, Any]:
    cal_dir, aa_dir, one_dir = work / "cal", work / "aa", work / "one"
    times_default, times_one = [], []
    for i in range(3):
        run(cal_dir, f"cal-{i}", None)
    for i in range(runs):  # alternate the two kinds, so that drift lands on both alike
        times_default.append(run(aa_dir, f"aa-{i}", None))
        times_one.append(run(one_dir, f"one-{i}", None, "--processes", "1"))
    calibration = work / "calibration.json"
    calibrate(sorted(cal_dir.iterdir()), calibration)
    pairs = list(itertools.combinations(sorted(aa_dir.iterdir()), 2))
    assumed, calibrated, mdes = [], [], {m: [] for m in ("e2e_latency", "ttft", "tpot")}
    for base, new in pairs:
        assumed += verdicts(compare(base, new))
        data = compare(base, new, calibration)
        calibrated += verdicts(data)
        for cell in data["cells"]:
            for m in mdes:
                if cell["metrics"].get(m, {}).get("mde") is not None:
                    mdes[m].append(cell["metrics"][m]["mde"])
    before = []
    for base, new in itertools.combinations(sorted(one_dir.iterdir()), 2):
        before += old_rule(base, new)

    def alarms(vs: list[str]) -> dict[str, Any]:
        bad = sum(v in ("regression", "improvement", "alarm") for v in vs)
        return {
            "verdicts": len(vs),
            "false_alarms": bad,
            "rate": bad / len(vs) if vs else None,
            "counts": {v: vs.count(v) for v in sorted(set(vs))},
        }

    return {
        "runs": runs,
        "pairs": len(pairs),
        "before_one_process_rank_test": alarms(before),
        "after_assumed_drift": alarms(assumed),
        "after_calibrated": alarms(calibrated),
        "mde_median_calibrated": {m: statistics.median(v) if v else None for m, v in mdes.items()},
        "wall_s_default_processes": times_default,
        "wall_s_one_process": times_one,
        "cost_ratio": statistics.median(times_default) / statistics.median(times_one),
    }


def power(work: Path, pairs: int = 5) -> dict[str, Any]:
    config = work / "sleep.json"
    config.write_text(json.dumps(SLEEP))
    cal, base_dir, new_dir = work / "sleep-cal", work / "sleep-base", work / "sleep-new"
    for i in range(3):
        run(cal, f"cal-{i}", config)
    calibration = work / "sleep-calibration.json"
    calibrate(sorted(cal.iterdir()), calibration)
    found, tpot_found, total, ratios = 0, 0, 0, []
    for i in range(pairs):
        run(base_dir, f"base-{i}", config)
        run(new_dir, f"new-{i}", config, extra={"TFBENCH_SLEEP_SCALE": "1.1"})
        data = compare(base_dir / f"base-{i}", new_dir / f"new-{i}", calibration)
        for cell in data["cells"]:
            total += 1
            found += cell["verdict"] == "regression"
            tpot = cell["metrics"]["tpot"]
            tpot_found += tpot["verdict"] == "regression"
            ratios.append(tpot["ratio"])
    return {
        "comparisons": total,
        "cell_regressions": found,
        "tpot_regressions": tpot_found,
        "rate": found / total if total else None,
        "tpot_ratio_median": statistics.median(ratios) if ratios else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="A/A runs of the demo (>= 4: 6 pairs x 4 cells)")
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tfbench-verdicts-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = {"machine": f"{os.cpu_count()} cores", "aa": aa(work, args.runs), "power": power(work)}
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    a, p = result["aa"], result["power"]
    print("| check | measured | goal |")
    print("|---|---|---|")
    for label, key in (
        ("A/A before (1 process, rank test on runs)", "before_one_process_rank_test"),
        ("A/A after, no calibration (assumed drift)", "after_assumed_drift"),
        ("A/A after, calibrated", "after_calibrated"),
    ):
        s = a[key]
        print(f"| {label} | {s['false_alarms']} of {s['verdicts']} ({s['rate']:.1%}) {s['counts']} | <= 5% |")
    print(f"| power: 10% slower decode found | {p['cell_regressions']} of {p['comparisons']} | >= 95% |")
    print(f"| cost: demo wall time, default processes / 1 | {a['cost_ratio']:.2f}x | <= 2x |")
    mde = ", ".join(f"{m} {v:.1%}" for m, v in a["mde_median_calibrated"].items() if v is not None)
    print(f"| minimum detectable effect on the demo's cells (median, calibrated) | {mde} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
