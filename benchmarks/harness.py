"""Benchmarks of the harness itself (run by `make bench`), printed as a Markdown report.

(a) timing overhead: the harness's e2e median against a bare timed `model.generate` loop on
    the same model, inputs and generation settings, in alternating rounds;
(b) process isolation: the fixed cost per cell (fork from the server and start-up before the
    worker runs, exit after it wrote its result), next to what a fresh interpreter costs;
(c) timing accuracy: on a model whose forward sleeps a known time, ttft and tpot against it.

(d) `tfbench plan` of 10,000 cells.

Goals: (a) <= 1.02x, (b) <= 0.5 s per cell, (c) within 2%, (d) well under 1 s.
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
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

OVERHEAD_CELL = {
    "model": "synthetic:llama-small",
    "device": "cpu",
    "dtype": "float32",
    "attn_implementation": "sdpa",
    "batch_size": 1,
    "sequence_length": 128,
    "num_tokens_to_generate": 64,
    "warmup_iterations": 3,
    "measurement_iterations": 20,
}

BARE_LOOP = r"""
import json, statistics, sys, time
import torch
from bench.worker import models
from bench.worker.generate import exact_greedy_config
cfg = json.loads(sys.argv[1])
net, tok = models.load(cfg["model"], None, {}, cfg["dtype"], "cpu", cfg["attn_implementation"], False, 0)
ids = torch.tensor(models.prompt_ids(tok, cfg["batch_size"], cfg["sequence_length"]))
mask = torch.ones_like(ids)
gen = exact_greedy_config(net, tok, cfg["num_tokens_to_generate"])
times = []
with torch.inference_mode():
    for i in range(cfg["warmup_iterations"] + cfg["measurement_iterations"]):
        t0 = time.perf_counter()
        net.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        t1 = time.perf_counter()
        if i >= cfg["warmup_iterations"]:
            times.append(t1 - t0)
print(json.dumps({"median": statistics.median(times), "n": len(times)}))
"""


# What the harness adds inside the timed call is one logits-processor call per token (the token
# clock) and a clock read at the start and end. Timed here two ways in one process:
# - directly: the cost of that per-token call on a real scores tensor, against the call's tpot;
# - by comparison: the same generate call with and without it, in pairs of random order; the
#   median of the per-pair ratios (process-to-process noise is often 10-20% on a shared VM, so
#   only pairs inside one process are comparable).
AB_IN_PROCESS = r"""
import json, random, statistics, sys, time
import torch
from transformers import LogitsProcessorList
from bench.worker import models
from bench.worker.timing import HostClock
from bench.worker.generate import TokenClockProcessor, exact_greedy_config
cfg, pairs = json.loads(sys.argv[1]), int(sys.argv[2])
net, tok = models.load(cfg["model"], None, {}, cfg["dtype"], "cpu", cfg["attn_implementation"], False, 0)
ids = torch.tensor(models.prompt_ids(tok, cfg["batch_size"], cfg["sequence_length"]))
mask = torch.ones_like(ids)
n = cfg["num_tokens_to_generate"]
gen = exact_greedy_config(net, tok, n)
clock = HostClock()
procs = LogitsProcessorList([TokenClockProcessor(clock)])
def bare():
    t0 = time.perf_counter()
    net.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    return time.perf_counter() - t0
def harness():
    clock.start()
    net.generate(input_ids=ids, attention_mask=mask, generation_config=gen, logits_processor=procs)
    return clock.stop()
random.seed(0)
with torch.inference_mode():
    for _ in range(cfg["warmup_iterations"]):
        bare(); harness()
    b, h, ratios = [], [], []
    for i in range(pairs):
        if random.random() < 0.5:
            hi = harness(); bi = bare()
        else:
            bi = bare(); hi = harness()
        b.append(bi); h.append(hi); ratios.append(hi / bi)
    scores = torch.zeros(cfg["batch_size"], net.config.vocab_size)
    reps = 20000
    clock.start()
    t0 = time.perf_counter()
    for _ in range(reps):
        procs(ids, scores)
    per_token = (time.perf_counter() - t0) / reps
    tpot = (statistics.median(h) - 0) / n
q = statistics.quantiles(ratios, n=4)
print(json.dumps({"bare": statistics.median(b), "harness": statistics.median(h), "pairs": pairs,
                  "pair_ratio_median": statistics.median(ratios), "pair_ratio_q1": q[0], "pair_ratio_q3": q[2],
                  "per_token_instrumentation_s": per_token, "time_per_token_s": tpot}))
"""


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("TFBENCH_")}
    out.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return out


def tfbench_run(config: dict, workdir: Path) -> dict:
    """Run the appliance on `config`; return its run.json and cell records."""
    cfg_path = workdir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    output = workdir / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "--config", str(cfg_path), "--output", str(output)],
        env=env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        sys.exit(f"tfbench run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    (run_dir,) = [p for p in output.iterdir() if p.is_dir()]
    run = json.loads((run_dir / "run.json").read_text())
    cells = [json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))]
    for path in list(output.rglob("*"))[::-1]:
        path.unlink() if path.is_file() else path.rmdir()
    return {"run": run, "cells": cells}


def bench_overhead(rounds: int, pairs: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", AB_IN_PROCESS, json.dumps(OVERHEAD_CELL), str(pairs)],
        env=env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    ab = json.loads(proc.stdout.strip().splitlines()[-1])
    harness, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            proc = subprocess.run(
                [sys.executable, "-c", BARE_LOOP, json.dumps(OVERHEAD_CELL)],
                env=env(),
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            )
            bare.append(json.loads(proc.stdout.strip().splitlines()[-1])["median"])
            (cell,) = tfbench_run({**OVERHEAD_CELL, "run_name": "overhead"}, Path(tmp))["cells"]
            harness.append(cell["stats"]["e2e_latency"]["p50"])
    h, b = statistics.median(harness), statistics.median(bare)
    return {
        "harness_median_s": h,
        "bare_median_s": b,
        "ratio": h / b,
        "harness": harness,
        "bare": bare,
        "ab": ab,
    }


def bench_isolation(cells: int) -> dict:
    config = {
        "model": "synthetic:llama-tiny",
        "device": "cpu",
        "batch_size": list(range(1, cells + 1)),
        "sequence_length": 16,
        "num_tokens_to_generate": 4,
        "warmup_iterations": 0,
        "measurement_iterations": 1,
        "run_name": "isolation",
    }
    with tempfile.TemporaryDirectory() as tmp:
        result = tfbench_run(config, Path(tmp))
    overheads = [c["isolation"]["overhead_s"] for c in result["cells"]]
    spawns = [c["isolation"]["spawn_s"] for c in result["cells"]]
    exits = [c["isolation"]["exit_s"] for c in result["cells"]]
    # The alternative to the fork server: a new interpreter per cell that imports what a worker
    # needs (torch, transformers, the model modules) and exits.
    fresh = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import bench.worker.cell"], env=env(), cwd=ROOT, check=True)
        fresh.append(time.perf_counter() - t)
    return {
        "cells": len(overheads),
        "overhead_median_s": statistics.median(overheads),
        "overhead_max_s": max(overheads),
        "spawn_median_s": statistics.median(spawns),
        "exit_median_s": statistics.median(exits),
        "server_start_s": result["run"]["worker_server_start_s"],
        "fresh_interpreter_s": statistics.median(fresh),
    }


def bench_accuracy(prefill: float, decode: float) -> dict:
    config = {
        "model": "synthetic:sleep",
        "model_config": {"prefill_sleep_s": prefill, "decode_sleep_s": decode},
        "device": "cpu",
        "attn_implementation": "eager",
        "batch_size": 1,
        "sequence_length": 32,
        "num_tokens_to_generate": 16,
        "warmup_iterations": 2,
        "measurement_iterations": 10,
        "run_name": "accuracy",
    }
    with tempfile.TemporaryDirectory() as tmp:
        (cell,) = tfbench_run(config, Path(tmp))["cells"]
    ttft, tpot = cell["stats"]["ttft"]["p50"], cell["stats"]["tpot"]["p50"]
    return {
        "prefill_truth_s": prefill,
        "decode_truth_s": decode,
        "ttft_p50_s": ttft,
        "tpot_p50_s": tpot,
        "ttft_error": ttft / prefill - 1,
        "tpot_error": tpot / decode - 1,
    }


def bench_plan(repeats: int = 5) -> dict:
    """`tfbench plan` of a 10,000-cell matrix (coverage 4 x 125 shapes), whole process, as a user runs it."""
    config = {
        "model": "synthetic:llama-3-8b-shape",
        "device": "cuda",
        "coverage": 4,
        "batch_size": [1, 2, 4, 8, 16],
        "sequence_length": [128, 256, 512, 1024, 2048],
        "num_tokens_to_generate": [16, 32, 64, 128, 256],
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.yaml"
        path.write_text(yaml.safe_dump(config))
        for label, extra in (("json", ["--json"]), ("table", [])):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "bench.cli", "plan", "--config", str(path), *extra],
                    env=env(),
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    check=True,
                )
                times.append(time.perf_counter() - t)
            out[label] = statistics.median(times)
            if label == "json":
                out["cells"] = len(json.loads(proc.stdout)["cells"])
    return out


def machine() -> str:
    from bench.run.machine import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="alternating harness/bare process rounds for (a)"
    )
    parser.add_argument("--pairs", type=int, default=60, help="in-process call pairs for (a)")
    parser.add_argument("--cells", type=int, default=8, help="cells in the isolation run (b)")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    args = parser.parse_args()

    t0 = time.perf_counter()
    a = bench_overhead(args.rounds, args.pairs)
    b = bench_isolation(args.cells)
    c = bench_accuracy(0.2, 0.1)
    d = bench_plan()
    elapsed = time.perf_counter() - t0

    def ok(flag: bool) -> str:
        return "meets goal" if flag else "MISSES goal"

    print(f"## Harness benchmarks ({time.strftime('%Y-%m-%d')}, {machine()})\n")
    print("| check | measured | goal | |")
    print("|---|---|---|---|")
    # When the bare loop alone varies between processes by more than the goal, the whole-process
    # ratio cannot tell 2% apart; say so rather than pass or fail on noise.
    noise = (max(a["bare"]) - min(a["bare"])) / a["bare_median_s"]
    whole_verdict = (
        ok(a["ratio"] <= 1.02)
        if noise <= 0.02
        else f"not resolvable here: the bare loop alone varies by {noise:.0%} between processes (see the paired rows)"
    )
    spread = (
        f"rounds: harness {min(a['harness']) * 1e3:.0f}-{max(a['harness']) * 1e3:.0f} ms, "
        f"bare {min(a['bare']) * 1e3:.0f}-{max(a['bare']) * 1e3:.0f} ms"
    )
    print(
        f"| (a) timing overhead, whole appliance: harness-reported e2e p50 / bare generate loop p50, "
        f"median of {args.rounds} alternating process rounds (llama-small, sdpa, b1 s128 n64; {spread}) | "
        f"{a['harness_median_s'] * 1e3:.2f} ms / {a['bare_median_s'] * 1e3:.2f} ms = **{a['ratio']:.4f}x** "
        f"| <= 1.02x | {whole_verdict} |"
    )
    ab = a["ab"]
    iqr = ab["pair_ratio_q3"] - ab["pair_ratio_q1"]
    paired_verdict = (
        ok(ab["pair_ratio_median"] <= 1.02)
        if iqr <= 0.04
        else f"not resolvable here: pairs spread over {iqr:.0%} between quartiles (see the direct row)"
    )
    print(
        f"| (a) instrumentation, paired: the same call with and without the token clock, median of "
        f"{ab['pairs']} per-pair ratios in one process (quartiles {ab['pair_ratio_q1']:.3f}-{ab['pair_ratio_q3']:.3f}) | "
        f"**{ab['pair_ratio_median']:.4f}x** | <= 1.02x | {paired_verdict} |"
    )
    frac = ab["per_token_instrumentation_s"] / ab["time_per_token_s"]
    print(
        f"| (a) instrumentation, direct: one token-clock call / time per generated token | "
        f"{ab['per_token_instrumentation_s'] * 1e6:.1f} µs / {ab['time_per_token_s'] * 1e3:.2f} ms = **{1 + frac:.4f}x** "
        f"| <= 1.02x | {ok(frac <= 0.02)} |"
    )
    print(
        f"| (b) isolation cost per cell, median of {b['cells']} cells (spawn {b['spawn_median_s']:.3f} s "
        f"+ exit {b['exit_median_s']:.3f} s; max {b['overhead_max_s']:.3f} s) | **{b['overhead_median_s']:.3f} s** "
        f"| <= 0.5 s | {ok(b['overhead_median_s'] <= 0.5)} |"
    )
    print(
        f"| (b') for comparison: a new interpreter per cell that imports the worker's modules and exits | {b['fresh_interpreter_s']:.2f} s "
        f"| | |"
    )
    print(f"| (b'') one-time worker server start per run (imports) | {b['server_start_s']:.2f} s | | |")
    print(
        f"| (c) ttft on a model that sleeps {c['prefill_truth_s'] * 1e3:.0f} ms to prefill | "
        f"{c['ttft_p50_s'] * 1e3:.2f} ms (**{c['ttft_error']:+.2%}**) | within 2% | {ok(abs(c['ttft_error']) <= 0.02)} |"
    )
    print(
        f"| (c) tpot on a model that sleeps {c['decode_truth_s'] * 1e3:.0f} ms per token | "
        f"{c['tpot_p50_s'] * 1e3:.3f} ms (**{c['tpot_error']:+.2%}**) | within 2% | {ok(abs(c['tpot_error']) <= 0.02)} |"
    )
    print(
        f"| (d) `tfbench plan` of {d['cells']:,} cells, whole process incl. interpreter start: "
        f"text / `--json` | {d['table']:.2f} s / {d['json']:.2f} s | well under 1 s | "
        f"{ok(max(d['table'], d['json']) < 1.0)} |"
    )
    excess = (c["tpot_p50_s"] - c["decode_truth_s"]) * 1e3
    print(
        f"\nThe sleep model's tpot exceeds its sleep by {excess:.2f} ms per token: that is generate's own "
        "host work per step (logits, stopping criteria, cache update), which a bare loop pays too."
    )
    print(f"\n(took {elapsed:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"overhead": a, "isolation": b, "accuracy": c, "plan": d, "machine": machine()}, indent=1
            )
        )


if __name__ == "__main__":
    main()
