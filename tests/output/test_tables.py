"""The plan table: a quantization column only where the plan quantizes."""

from __future__ import annotations

from rich.console import Console

from bench.config.sources import validate
from bench.output.tables import combo_label, plan_table
from bench.plan.matrix import Capabilities, build_plan

CPU = Capabilities(device="cpu", flash_attn=False, kernels=False, quantization_packages={"torchao": "0.18.0"})


def _text(quantization: list[str]) -> str:
    config = validate({"model": "synthetic:llama-tiny", "quantization": quantization}, {}, "test").config
    console = Console(width=300, record=True)
    console.print(plan_table(build_plan(config, CPU)))
    return console.export_text()


def test_the_quantization_column_shows_only_where_the_plan_quantizes():
    assert "quantization" not in _text(["none"])
    text = _text(["none", "torchao-int8-weight-only"])
    assert "quantization" in text and "torchao-int8-weight-only" in text


def test_a_quantized_cell_says_its_method_in_its_label():
    config = validate(
        {"model": "synthetic:llama-tiny", "quantization": ["none", "bnb-4bit"]}, {}, "test"
    ).config
    plain, quantized = build_plan(config, CPU).cells
    assert combo_label(plain) == "sdpa"
    assert combo_label(quantized) == "sdpa+bnb-4bit"
