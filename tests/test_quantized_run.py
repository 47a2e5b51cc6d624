"""A quantized cell through the real worker, as the container runs it: torchao int8 weight-only on
the CPU, next to the same cell unquantized (its reference for the output agreement)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import cells_by_id, only_run_dir, run_entrypoint, write_config

# Found, not imported: the workers import it; this process need not pay for it.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="torchao is not installed"
)

METHOD = "torchao-int8-weight-only"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("quantized")
    config = write_config(
        base,
        attn_implementation="eager",
        quantization=["none", METHOD, "bnb-4bit"],
        # wide enough that int8 storage shows beside the scales it adds (one per output row)
        model_config={"hidden_size": 256, "intermediate_size": 512},
        run_name="quantized",
    )
    proc = run_entrypoint(config, base / "results")
    return proc, only_run_dir(base / "results")


def test_the_quantized_cell_runs_and_records_what_was_applied(run):
    proc, run_dir = run
    assert proc.returncode == 0, proc.stderr
    cells = {rec["cell"]["quantization"]: rec for rec in cells_by_id(run_dir).values()}
    plain, quantized, bnb = cells["none"], cells[METHOD], cells["bnb-4bit"]
    assert plain["status"] == "ok" and quantized["status"] == "ok", quantized.get("error")
    assert bnb["status"] == "skipped" and "CUDA GPU only" in bnb["reason"]
    assert METHOD in quantized["cell"]["name"] and "int8" not in plain["cell"]["name"]
    applied = quantized["quantization"]
    assert applied["method"] == METHOD
    assert applied["config"]["quant_method"] == "torchao"
    assert applied["config"]["quant_type"]["default"]["_type"] == "Int8WeightOnlyConfig"
    assert applied["quantized_parameters"] > 0
    # int8 data and float32 scales: well under half the float32 weights
    assert applied["weight_bytes"] < 0.5 * applied["unquantized_weight_bytes"]
    assert "quantization" not in plain
    # the roofline reads the quantized bytes; the parameters are the same model's
    assert quantized["roofline"]["weight_bytes_per_step"] < 0.5 * plain["roofline"]["weight_bytes_per_step"]
    assert quantized["parameters"] == plain["parameters"]
    assert quantized["memory"]["peak_bytes"] > 0


def test_the_quantized_cell_is_compared_with_the_unquantized_reference(run):
    _, run_dir = run
    rows = {json.loads(line)["quantization"]: json.loads(line) for line in (run_dir / "summary.jsonl").open()}
    plain, quantized = rows["none"], rows[METHOD]
    assert plain["agreement_reference"] == plain["cell_id"]
    assert quantized["agreement_reference"] == plain["cell_id"]
    assert quantized["agreement_match_rate"] is not None
