"""The plan table: a quantization column only where the plan quantizes; the progress display."""

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


def test_the_progress_display_has_a_line_per_running_cell_with_its_gpus_and_cores():
    from bench.output.tables import ProgressReporter
    from bench.results.records import CellRecord

    config = validate({"model": "synthetic:llama-tiny", "batch_size": [1, 2, 3]}, {}, "test").config
    plan = build_plan(config, CPU)
    first, second, third = plan.cells
    console = Console(width=300, record=True)
    reporter = ProgressReporter(console, progress=None)
    reporter.start(plan)
    try:
        reporter.cell_started(first, slot={"gpus": ["GPU-0aaaaaaaaaaaaaaa"], "cpus": [0, 1, 2, 3]})
        reporter.cell_started(second, slot={"gpus": ["GPU-1bbbbbbbbbbbbbbb"], "cpus": [4, 5, 6, 7]})
        reporter.cell_phase(second, "decode", 2, 5)

        def shown() -> list[str]:
            return reporter.progress.tasks[0].fields["current"].splitlines()

        assert shown() == [
            f"{first.name} · starting [dim](GPU-0aaaaaaa; cores 0-3)[/dim]",
            f"{second.name} · decode 2/5",
        ]
        record = CellRecord(cell_id=first.cell_id, status="failed", reason="boom", cell=first)
        reporter.cell_done(first, record)  # its line goes; the other cell's stays
        reporter.cell_started(third, slot={"gpus": ["GPU-0aaaaaaaaaaaaaaa"], "cpus": [0, 1, 2, 3]})
        assert shown() == [
            f"{second.name} · decode 2/5",
            f"{third.name} · starting [dim](GPU-0aaaaaaa; cores 0-3)[/dim]",
        ]
        assert reporter.progress.tasks[0].completed == 1
    finally:
        reporter.stop()
