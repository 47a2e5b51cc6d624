"""benchmark_v2's configs read and written back, checked against what benchmark_v2's own code made
(tests/fixtures/benchmark_v2: config files, cross_generation.json, adapt_configs.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.config import benchmark_v2 as v2
from bench.config.sources import validate
from bench.errors import UserError
from bench.plan.matrix import Capabilities, build_plan
from tests.conftest import ROOT

CONFIGS = ROOT / "tests" / "fixtures" / "benchmark_v2" / "configs"
CROSS = json.loads((CONFIGS / "cross_generation.json").read_text())
DEFAULT_SHAPE = v2.Shape(5, 20, 1, 128, 128, True)


def _shape_of(d: dict) -> v2.Shape:
    return v2.Shape(
        d["warmup_iterations"],
        d["measurement_iterations"],
        d["batch_size"],
        d["sequence_length"],
        d["num_tokens_to_generate"],
        d["gpu_monitoring"],
    )


@pytest.mark.parametrize("name", ["current_single.json", "current_level1.jsonl", "current_level2.jsonl"])
def test_current_configs_are_written_back_as_benchmark_v2_writes_them(name: str) -> None:
    # cross_generation.json: BenchmarkConfig.from_dict(...).to_dict() and .hash of every config.
    expected = CROSS["current"][name]
    read = v2.read_config_file(CONFIGS / name)
    assert len(read) == len(expected)
    for (where, data), want in zip(read, expected):
        combo, tp, notes = v2.parse_config(data, where)
        assert not tp and not notes
        written = v2.config_dict(combo, _shape_of(data))
        assert written == want["to_dict"]
        assert list(written) == list(want["to_dict"])  # the key order is part of the hash
        assert v2.config_hash(written) == want["config_hash"]


def test_levels_are_benchmark_v2s_levels() -> None:
    for level in (1, 2):
        expected = [
            json.loads(line) for line in (CONFIGS / f"current_level{level}.jsonl").read_text().splitlines()
        ]
        written = [v2.config_dict(c, DEFAULT_SHAPE) for c in v2.level_combos(level, kernels_available=False)]
        assert written == expected
    assert len(v2.level_combos(3, kernels_available=False)) == 4 * 2 * 1 * 2
    assert len(v2.level_combos(4, kernels_available=True)) == 4 * 5 * 2 * 2
    assert v2.level_combos(-1, kernels_available=False) == []


def test_flags_cross_the_file_as_adapt_configs_does() -> None:
    fixture = json.loads((CONFIGS / "adapt_configs.json").read_text())
    args = fixture["adapt_configs_arguments"]
    m = v2.matrix(
        CONFIGS / fixture["input_file"],
        1,
        args["warmup_iterations"],
        args["measurement_iterations"],
        args["batch_size"],
        args["sequence_length"],
        args["num_tokens_to_generate"],
        args["gpu_monitoring"],
        kernels_available=False,
    )
    written = [v2.config_dict(combo, shape, m.tp) for shape, combo in m.entries()]
    assert written == [o["config"] for o in fixture["output"]]
    assert [v2.config_hash(c) for c in written] == [o["config_hash"] for o in fixture["output"]]


def test_the_tp_generation_keeps_its_key_and_suffix() -> None:
    expected = [json.loads(line) for line in (CONFIGS / "tp_level1.jsonl").read_text().splitlines()]
    no_tp = [e for e in expected if e["tp_plan"] is None]
    m = v2.matrix(CONFIGS / "tp_level1.jsonl", 1, 5, 20, [1], [128], [128], True, kernels_available=False)
    assert m.tp
    assert [v2.config_dict(c, s, m.tp) for s, c in m.entries()] == no_tp


def test_older_configs_are_measured_as_they_say() -> None:
    (where, data), *_ = v2.read_config_file(CONFIGS / "old_single.json")
    combo, _, notes = v2.parse_config(data, where)
    assert combo.compile == data["compile_mode"] and combo.fullgraph
    assert any("drop those keys" in n for n in notes)
    paged = {"attn_implementation": "paged|sdpa", "continuous_batching": True, "compile_mode": None}
    assert v2.parse_config(paged, "x")[0] == v2.V2Combo("sdpa", continuous_batching=True)
    for where, data in v2.read_config_file(CONFIGS / "oldest_useful.jsonl"):
        v2.parse_config(data, where)  # every config of the oldest generation reads


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"attn_implementation": "paged"}, ['attn_implementation = "paged"', "allowed: eager"]),
        ({"compile_kwargs": {"backend": "eager"}}, ["compile_kwargs.backend", "inductor"]),
        ({"compile_kwargs": {"mode": "fast"}}, ['compile_kwargs.mode = "fast"', "reduce-overhead"]),
        ({"compile_kwargs": {"foo": 1}}, ["compile_kwargs.foo"]),
        ({"compile_kwargs": 3}, ["compile_kwargs = 3"]),
        ({"kernelize": "yes"}, ['kernelize = "yes"', "true or false"]),
        ({"tp_plan": "auto"}, ['tp_plan = "auto"', "tensor-parallel"]),
        ([1, 2], ["a benchmark_v2 config is a JSON object"]),
    ],
)
def test_configs_tfbench_cannot_measure_exit_2_naming_the_key(data: object, words: list[str]) -> None:
    with pytest.raises(UserError) as info:
        v2.parse_config(data, "cfg.jsonl line 2")
    assert "cfg.jsonl line 2" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_config_files(tmp_path: Path) -> None:
    lines = tmp_path / "c.jsonl"
    lines.write_text(
        '{"attn_implementation": "sdpa"}\n\n  {"indented": 1}\n# comment\n{"attn_implementation": "eager"}\n'
    )
    assert [w for w, _ in v2.read_config_file(lines)] == [f"{lines} line 1", f"{lines} line 5"]
    for name, text, words in [
        ("c.yaml", "{}", "allowed: a .json file"),
        ("bad.json", "{", "not valid JSON"),
        ("empty.jsonl", "\n", "no config in it"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(UserError, match=words):
            v2.matrix(path, 1, 3, 10, [1], [8], [4], True, False)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({"new_tokens": [1]}, "--num-tokens-to-generate 1: allowed: integers > 1"),
        ({"batch_sizes": [0]}, "--batch-size 0"),
        ({"warmup": -1}, "--warmup -1"),
        ({"iterations": 0}, "--iterations 0"),
    ],
)
def test_bad_flags_exit_2(flags: dict, words: str) -> None:
    kwargs = {
        "config_file": None,
        "level": 1,
        "warmup": 3,
        "iterations": 10,
        "batch_sizes": [1],
        "sequence_lengths": [8],
        "new_tokens": [4],
        "gpu_monitoring": True,
        "kernels_available": False,
        **flags,
    }
    with pytest.raises(UserError, match=words):
        v2.matrix(**kwargs)


def test_the_matrix_becomes_one_tfbench_config_with_the_same_cells() -> None:
    m = v2.matrix(CONFIGS / "current_level2.jsonl", 1, 3, 10, [1, 4], [64], [16, 32], True, False)
    fields = v2.bench_config(m, "org/model")
    lc = validate(dict(fields), {}, "test")
    plan = build_plan(lc.config, Capabilities(device="cuda", flash_attn=True, kernels=True))
    assert len(plan.cells) == len(m.entries()) == 8 * 4
    # every benchmark_v2 config is exactly one cell
    cells = {(v2.combo_of(c), c.batch_size, c.sequence_length, c.num_tokens_to_generate) for c in plan.cells}
    assert cells == {(c, s.batch_size, s.sequence_length, s.num_tokens) for s, c in m.entries()}
    assert lc.config.dtype == "bfloat16"


def test_rewrites_name_what_benchmark_v2_would_run_instead() -> None:
    fa2_compiled = v2.V2Combo("flash_attention_2", "default")
    assert v2.rewrites(fa2_compiled, flash_attn=True, kernels=True, device="cuda") == [
        "compile turned off (flash_attention_2 with generate)"
    ]
    lines = v2.rewrites(
        v2.V2Combo("flex_attention", "max-autotune", kernelize=True, continuous_batching=True),
        False,
        False,
        "cuda",
    )
    assert lines == [
        "continuous batching turned off (flex_attention)",
        "compile mode max-autotune -> default (continuous batching)",
        "runs unkernelized but is recorded as kernelized (kernels is not installed)",
    ]
    assert v2.rewrites(v2.V2Combo("sdpa"), False, False, "cuda") == []
