#!/usr/bin/env bash
# The GPU check: the real appliance on a real-sized synthetic model on one GPU, then its checks.
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]
#
# Runs scripts/gpu_check.yaml (Llama-3-8B shape, bf16, random weights; sdpa/eager/flex_attention
# x compile none/default x batch 1 and 8) with tfbench from this checkout, under the machine's
# own python and packages (torch, transformers, pydantic, rich, PyYAML, psutil, nvidia-ml-py),
# then scripts/gpu_check_report.py: every cell ok, device-event and host timings agree within 2%,
# the first timed run is not an outlier, energy per token > 0, decode MBU in (0, 1]. The table
# it prints last goes into BENCHMARKS.md with the date and the GPU. Exit 0 when every check passes.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-$(mktemp -d)}/gpu-check-results}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
start=$(date +%s)
code=0
"$PY" -m bench.cli run --config scripts/gpu_check.yaml --output "$RESULTS" --run-id gpu-check || code=$?
echo "tfbench run exited $code after $(($(date +%s) - start)) s"
"$PY" scripts/gpu_check_report.py "$RESULTS/gpu-check"
