"""The GPU pool measured on a machine without a GPU.

    python benchmarks/pool.py [--repeats 3]

- Simulated speed-up: a 16-cell matrix of the sleep model (cells that wait rather than compute, so
  that the host's cores are not the bottleneck) on 8 simulated GPUs (the test suite's fake NVML,
  TFBENCH_TEST_NVML=tests.fake_nvml:gpus8; the workers run their cells on the CPU) against the same
  matrix on 1. The matrix's wall time (first worker started to last one ended) and the whole
  invocation's; the two runs must hold the same cells, ids and statuses.
- Interference on the CPU: a small real-compute cell (synthetic:llama-tiny, batch 1, decode) alone
  on one pinned core, and beside a second cell running at the same time on the other core: the
  ratio of its e2e and tpot medians. `--repeats` pairs, alternating, the median ratio reported.
- Host cores per cell: the same cell alone on 1 pinned core against unpinned on the whole machine
  (2 cores here): what a second core is worth to a host-bound decode loop.

Writes benchmarks/results/pool.json and prints the figures BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pool.json"

SLEEP_MATRIX = {
    "model": "synthetic:sleep",
    "model_config": {"prefill_sleep_s": 0.05, "decode_sleep_s": 0.04},
    "device": "cuda",
    "attn_implementation": "eager",
    "batch_size": [1, 2, 3, 4],
    "sequence_length": [8, 16, 32, 64],
    "num_tokens_to_generate": 50,
    "warmup_iterations": 1,
    # About 10 s of sleep per cell: long beside the cost of starting 8 workers at once on 2 cores
    # (about 0.8 s each, against 0.13 s for one), which is what keeps the speed-up under 8x.
    "measurement_iterations": 4,
    "processes": 1,
    "max_attempts": 1,
    "cell_timeout_s": 300,
}
TINY = {
    "model": "synthetic:llama-tiny",
    "device": "cpu",
    "attn_implementation": "sdpa",
    "sequence_length": 16,
    "num_tokens_to_generate": 32,
    "warmup_iterations": 3,
    "measurement_iterations": 30,
    "processes": 1,
    "max_attempts": 1,
}


def run(config: dict[str, Any], directory: Path, **env: str) -> tuple[Path, float]:
    """One invocation of the appliance on `config`; its run directory and wall time."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TFBENCH_")}
    environ.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TFBENCH_CONFIG=str(directory / "config.yaml"),
        TFBENCH_OUTPUT=str(directory / "out"),
        TFBENCH_LOG_FORMAT="json",
        PYTHONPATH=str(ROOT),
        **env,
    )
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "entrypoint.py")], env=environ, capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (run_dir,) = [p for p in (directory / "out").iterdir() if p.is_dir()]
    return run_dir, wall


def cells(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")}


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def matrix_wall(records: dict[str, dict[str, Any]]) -> float:
    procs = [p for r in records.values() for p in r.get("processes") or []]
    return max(stamp(p["finished_at"]) for p in procs) - min(stamp(p["started_at"]) for p in procs)


def speedup(base: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen = {}
    for n in (1, 8):
        run_dir, wall = run(
            {**SLEEP_MATRIX, "concurrent_cells": n},
            base / f"gpus{n}",
            TFBENCH_TEST_NVML=f"tests.fake_nvml:gpus{n}",
        )
        records = cells(run_dir)
        meta = json.loads((run_dir / "run.json").read_text())
        seen[n] = {cid: (r["status"], r["cell"]) for cid, r in records.items()}
        out[f"gpus_{n}"] = {
            "cells": len(records),
            "concurrency": meta["concurrency"]["used"],
            "matrix_wall_s": matrix_wall(records),
            "invocation_wall_s": wall,
            "statuses": sorted({r["status"] for r in records.values()}),
            "gpus_used": len(
                {g for r in records.values() for p in r["processes"] for g in p.get("gpus") or []}
            ),
        }
    out["same_cells_ids_statuses"] = seen[1] == seen[8]
    out["matrix_speedup"] = out["gpus_1"]["matrix_wall_s"] / out["gpus_8"]["matrix_wall_s"]
    out["invocation_speedup"] = out["gpus_1"]["invocation_wall_s"] / out["gpus_8"]["invocation_wall_s"]
    return out


def target_stats(run_dir: Path, batch: int) -> dict[str, float]:
    (rec,) = [r for r in cells(run_dir).values() if r["cell"]["batch_size"] == batch]
    assert rec["status"] == "ok", rec.get("reason")
    return {m: rec["stats"][m]["p50"] for m in ("e2e_latency", "tpot")}


def interference(base: Path, repeats: int) -> dict[str, Any]:
    """Target: batch 1. Beside it: batch 4, which runs longer, so it is busy throughout."""
    rows = []
    for i in range(repeats):
        # One cell, concurrent_cells 2: a pool of two 1-core shares, of which only one is used.
        alone_dir, _ = run({**TINY, "batch_size": [1], "concurrent_cells": 2}, base / f"alone{i}")
        beside_dir, _ = run({**TINY, "batch_size": [1, 4], "concurrent_cells": 2}, base / f"beside{i}")
        whole_dir, _ = run({**TINY, "batch_size": [1]}, base / f"whole{i}")  # unpinned, all cores
        alone, beside, whole = (target_stats(d, 1) for d in (alone_dir, beside_dir, whole_dir))
        rows.append({"alone_1core": alone, "beside_1core": beside, "unpinned": whole})
    med = lambda key, m: statistics.median(r[key][m] for r in rows)  # noqa: E731
    return {
        "rows": rows,
        "beside_over_alone": {
            m: med("beside_1core", m) / med("alone_1core", m) for m in ("e2e_latency", "tpot")
        },
        "one_core_over_unpinned": {
            m: med("alone_1core", m) / med("unpinned", m) for m in ("e2e_latency", "tpot")
        },
        "ratios_each_pair": [r["beside_1core"]["tpot"] / r["alone_1core"]["tpot"] for r in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tfbench-pool-") as tmp:
        base = Path(tmp)
        result = {
            "machine": {
                "cpu_count": os.cpu_count(),
                "cores_allowed": len(os.sched_getaffinity(0)),
                "python": platform.python_version(),
                "loadavg_before": load_before,
            },
            "speedup": speedup(base),
            "interference": interference(base, args.repeats),
        }
    result["machine"]["loadavg_after"] = os.getloadavg()
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    s, f = result["speedup"], result["interference"]
    print(
        f"sleep matrix, {s['gpus_1']['cells']} cells: 1 GPU {s['gpus_1']['matrix_wall_s']:.1f} s, "
        f"8 GPUs {s['gpus_8']['matrix_wall_s']:.1f} s -> {s['matrix_speedup']:.2f}x "
        f"(whole invocation {s['invocation_speedup']:.2f}x); same cells, ids, statuses: {s['same_cells_ids_statuses']}"
    )
    print(
        "interference (beside / alone, 1 core each): "
        + ", ".join(f"{m} {v:.3f}" for m, v in f["beside_over_alone"].items())
        + "; 1 pinned core / unpinned: "
        + ", ".join(f"{m} {v:.3f}" for m, v in f["one_core_over_unpinned"].items())
    )
    print(f"load average before {load_before}, after {result['machine']['loadavg_after']}")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
