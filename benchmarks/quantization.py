"""A quantized CPU cell next to the same cell unquantized (run by `make bench`).

One run, as a user runs it, of a synthetic Llama large enough for its weights to matter (about
156M parameters, 620 MB in float32) with quantization [none, torchao-int8-weight-only]: eager
attention, no compile, so that the unquantized cell is the quantized one's agreement reference.
The cells' processes interleave (round-robin), so that the machine's drift hits both. For each:
peak memory and memory after load, e2e, ttft and tpot p50, the weight bytes the roofline reads,
and the agreement of the output with the reference. Figures go to --json (default
benchmarks/results/quantization.json) and print as the table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import machine  # noqa: E402

from tests.conftest import clean_env, run_entrypoint  # noqa: E402

METHOD = "torchao-int8-weight-only"
CONFIG = {
    "model": "synthetic:llama-small",
    "model_config": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
    },
    "device": "cpu",
    "attn_implementation": "eager",
    "quantization": ["none", METHOD],
    "batch_size": 1,
    "sequence_length": 128,
    "num_tokens_to_generate": 32,
    "warmup_iterations": 1,
    "measurement_iterations": 6,
    "processes": 2,
    "run_name": "quantization",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "quantization.json")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(CONFIG))
        out = Path(tmp) / "results"
        proc = run_entrypoint(config, out, env=clean_env(TFBENCH_RUN_ID="quantization"), timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"the run failed:\n{proc.stderr}")
        run = out / "quantization"
        records = [json.loads(p.read_text()) for p in (run / "cells").glob("*.json")]
        rows = {json.loads(line)["cell_id"]: json.loads(line) for line in (run / "summary.jsonl").open()}
    cells = {}
    for rec in sorted(records, key=lambda r: r["cell"]["index"]):
        if rec["status"] != "ok":
            raise SystemExit(
                f"{rec['cell']['name']}: {rec['status']} {rec.get('error') or rec.get('reason')}"
            )
        row = rows[rec["cell_id"]]
        cells[rec["cell"]["quantization"]] = {
            "name": rec["cell"]["name"],
            "cell_id": rec["cell_id"],
            "parameters": rec["parameters"],
            "weight_bytes_per_step": rec["roofline"]["weight_bytes_per_step"],
            "quantization": rec.get("quantization"),
            "peak_memory_bytes": rec["memory"]["peak_bytes"],
            "after_load_bytes": rec["memory"]["after_load_bytes"],
            "load_time_s": rec["load_time_s"],
            **{f"{m}_p50_s": rec["stats"][m]["p50"] for m in ("e2e_latency", "ttft", "tpot")},
            "tpot_process_p50s_s": rec["stats"]["tpot"].get("process_p50s"),
            "agreement": {
                "reference": row["agreement_reference"],
                "match_rate": row["agreement_match_rate"],
                "diverges_at": row["agreement_diverges_at"],
            },
        }
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "config": CONFIG,
        "elapsed_s": time.perf_counter() - t0,
        "cells": cells,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"## Quantization ({figures['date']}, {figures['machine']}; {figures['elapsed_s']:.0f} s)\n")
    print(
        "| quantization | weight bytes | memory after load | peak memory | e2e p50 | ttft p50 | tpot p50 | agreement |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method, c in cells.items():
        agree = c["agreement"]
        said = (
            "reference"
            if agree["reference"] == c["cell_id"]
            else f"match {agree['match_rate']:.2f}"
            + (f", diverges at {agree['diverges_at']}" if agree["diverges_at"] is not None else "")
        )
        print(
            f"| {method} | {c['weight_bytes_per_step'] / 2**20:.0f} MiB | {c['after_load_bytes'] / 2**20:.0f} MiB "
            f"| {c['peak_memory_bytes'] / 2**20:.0f} MiB | {c['e2e_latency_p50_s'] * 1e3:.0f} ms "
            f"| {c['ttft_p50_s'] * 1e3:.0f} ms | {c['tpot_p50_s'] * 1e3:.1f} ms | {said} |"
        )


if __name__ == "__main__":
    main()
