"""The plan: coverage levels, the cross product, skip reasons and stable cell ids.

Pure functions of a config and a Capabilities value; nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.config.schema import ATTN_IMPLEMENTATIONS, COMPILE_MODES, BenchConfig
from bench.config.sources import validate
from bench.plan.matrix import (
    Capabilities,
    Cell,
    build_plan,
    cell_name,
    combo_name,
    coverage_combos,
    resolve_dtype,
    skip_reason,
)

TINY = "synthetic:llama-tiny"
CPU = Capabilities(device="cpu", flash_attn=False, kernels=False)
CUDA_BARE = Capabilities(device="cuda", flash_attn=False, kernels=False)
CUDA_FULL = Capabilities(device="cuda", flash_attn=True, kernels=True)


def config(**fields: Any) -> BenchConfig:
    merged = {"model": TINY, **fields}
    return validate(merged, {}, "test").config


def only_cell(plan_config: BenchConfig, caps: Capabilities = CPU) -> Cell:
    (cell,) = build_plan(plan_config, caps).cells
    return cell


def combo(cell: Cell) -> tuple[str, str | None, bool, bool]:
    return (cell.attn_implementation, cell.compile, cell.kernelize, cell.continuous_batching)


# ---------------------------------------------------------------------------------------------
# Coverage levels
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "count"), [(0, 1), (1, 4), (2, 8), (3, 32), (4, 80)])
def test_coverage_level_counts(level: int, count: int) -> None:
    combos = coverage_combos(level)
    assert len(combos) == count
    assert len(set(combos)) == count


def test_coverage_level_0_is_uncompiled_flex_attention() -> None:
    assert coverage_combos(0) == [("flex_attention", None, False, False)]


def test_coverage_level_1() -> None:
    assert coverage_combos(1) == [
        ("flex_attention", None, False, False),
        ("flash_attention_2", None, False, False),
        ("eager", "default", False, False),
        ("flash_attention_2", None, False, True),
    ]


def test_coverage_level_2() -> None:
    assert coverage_combos(2) == [
        *coverage_combos(1),
        ("sdpa", "default", False, False),
        ("flex_attention", "default", True, False),
        ("flash_attention_2", None, True, False),
        ("sdpa", None, False, True),
    ]


def test_coverage_levels_3_and_4_are_full_products() -> None:
    level3 = set(coverage_combos(3))
    level4 = set(coverage_combos(4))
    assert {c[1] for c in level3} == {None, "default"}
    assert {c[1] for c in level4} == {None, *COMPILE_MODES}
    for combos in (level3, level4):
        assert {c[0] for c in combos} == set(ATTN_IMPLEMENTATIONS)
        assert {c[2] for c in combos} == {False, True}
        assert {c[3] for c in combos} == {False, True}


def test_each_coverage_level_contains_the_one_below() -> None:
    for level in range(4):
        assert set(coverage_combos(level)) <= set(coverage_combos(level + 1)), level


def test_coverage_config_plans_the_level_combos() -> None:
    plan = build_plan(config(coverage=2, batch_size=[1, 2]), CUDA_FULL)
    assert len(plan.cells) == 16
    # Each combo with every shape, combos in the level's order.
    assert [combo(c) for c in plan.cells[::2]] == coverage_combos(2)


def test_compile_fullgraph_only_applies_to_compiled_cells() -> None:
    plan = build_plan(config(coverage=3, compile_fullgraph=True, compile_dynamic=True), CUDA_FULL)
    for cell in plan.cells:
        if cell.compile is None:
            assert (cell.compile_fullgraph, cell.compile_dynamic) == (False, None), cell.name
        else:
            assert (cell.compile_fullgraph, cell.compile_dynamic) == (True, True), cell.name


# ---------------------------------------------------------------------------------------------
# The cross product
# ---------------------------------------------------------------------------------------------

BATCHES = [1, 4]
SEQS = [32, 64, 128]
NEWS = [8, 16]
ATTNS = ["sdpa", "eager"]


def cross_config() -> BenchConfig:
    return config(
        batch_size=BATCHES, sequence_length=SEQS, num_tokens_to_generate=NEWS, attn_implementation=ATTNS
    )


def test_build_plan_is_the_cross_product_in_config_order() -> None:
    plan = build_plan(cross_config(), CPU)
    assert len(plan.cells) == 24
    expected = [(a, b, s, n) for a in ATTNS for b in BATCHES for s in SEQS for n in NEWS]
    got = [
        (c.attn_implementation, c.batch_size, c.sequence_length, c.num_tokens_to_generate) for c in plan.cells
    ]
    assert got == expected
    assert [c.index for c in plan.cells] == list(range(24))
    assert len({c.cell_id for c in plan.cells}) == 24
    assert len({c.name for c in plan.cells}) == 24
    assert plan.cells[0].name == "sdpa, no compile, b1 s32 n8"
    assert plan.cells[-1].name == "eager, no compile, b4 s128 n16"
    assert all(c.runnable for c in plan.cells)
    assert plan.warnings == []


def test_build_plan_is_deterministic() -> None:
    first = build_plan(cross_config(), CPU).to_dict()
    second = build_plan(cross_config(), CPU).to_dict()
    assert first == second


def test_cell_round_trips_through_dict() -> None:
    plan = build_plan(config(compile="default", kernelize=[False, True]), CUDA_BARE)
    for cell in plan.cells:
        assert Cell.from_dict(json.loads(json.dumps(cell.to_dict()))) == cell


# ---------------------------------------------------------------------------------------------
# Skip reasons
# ---------------------------------------------------------------------------------------------


def reason(
    attn: str = "sdpa",
    mode: str | None = None,
    kernelize: bool = False,
    cb: bool = False,
    seq: int = 128,
    new_tokens: int = 32,
    model: str = TINY,
    model_config: dict[str, Any] | None = None,
    caps: Capabilities = CUDA_FULL,
) -> str | None:
    return skip_reason(attn, mode, kernelize, cb, seq, new_tokens, model, model_config or {}, caps)


def test_plain_cells_run_everywhere() -> None:
    assert reason(caps=CPU) is None
    assert reason(caps=CUDA_BARE) is None
    assert reason(attn="eager", mode="default", caps=CPU) is None


def test_flash_attention_2_on_cpu() -> None:
    assert reason(attn="flash_attention_2", caps=CPU) == "flash_attention_2 needs a CUDA GPU (device is cpu)"


def test_flash_attention_2_without_flash_attn() -> None:
    assert (
        reason(attn="flash_attention_2", caps=CUDA_BARE)
        == "flash_attention_2 needs the flash-attn package, which is not installed"
    )
    assert reason(attn="flash_attention_2", caps=CUDA_FULL) is None


def test_kernelize_without_kernels() -> None:
    no_kernels = Capabilities(device="cuda", flash_attn=True, kernels=False)
    assert (
        reason(kernelize=True, caps=no_kernels)
        == "kernelize needs the kernels package, which is not installed"
    )
    assert reason(kernelize=True, caps=CPU) == "kernelize needs the kernels package, which is not installed"
    assert reason(kernelize=True, caps=CUDA_FULL) is None


def test_flash_attention_2_with_compile_needs_continuous_batching() -> None:
    text = reason(attn="flash_attention_2", mode="default", cb=False)
    assert text == "flash_attention_2 with torch.compile is not supported by plain generate"
    assert reason(attn="flash_attention_2", mode="default", cb=True) is None


def test_flex_attention_with_continuous_batching() -> None:
    assert reason(attn="flex_attention", cb=True) == "continuous batching does not support flex_attention"
    assert reason(attn="flex_attention", cb=False) is None


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_continuous_batching_skips_cuda_graph_modes(mode: str) -> None:
    text = reason(cb=True, mode=mode)
    assert text is not None
    assert text.startswith(
        f"continuous batching compiles only with mode default or max-autotune-no-cudagraphs, not {mode}"
    )


@pytest.mark.parametrize("mode", [None, "default", "max-autotune-no-cudagraphs"])
def test_continuous_batching_allows_modes_without_cuda_graphs(mode: str | None) -> None:
    assert reason(cb=True, mode=mode) is None


def test_reduce_overhead_on_cpu() -> None:
    text = reason(mode="reduce-overhead", caps=CPU)
    assert text is not None
    assert text.startswith("reduce-overhead only adds CUDA graphs, which do not exist on cpu")
    assert reason(mode="reduce-overhead", caps=CUDA_FULL) is None
    assert reason(mode="max-autotune", caps=CPU) is None


def test_shape_beyond_the_presets_positions() -> None:
    # llama-tiny has 4096 positions; the boundary itself fits.
    assert reason(seq=4000, new_tokens=96) is None
    assert reason(seq=4000, new_tokens=97) == (
        "sequence_length + num_tokens_to_generate = 4097 exceeds the model's 4096 positions"
    )
    assert reason(seq=1000, new_tokens=25, model="synthetic:gpt2-tiny") == (
        "sequence_length + num_tokens_to_generate = 1025 exceeds the model's 1024 positions"
    )


def test_model_config_override_moves_the_position_limit() -> None:
    assert reason(seq=8000, new_tokens=100, model_config={"max_position_embeddings": 8192}) is None
    assert reason(seq=100, new_tokens=28, model_config={"max_position_embeddings": 64}) == (
        "sequence_length + num_tokens_to_generate = 128 exceeds the model's 64 positions"
    )


def test_hub_models_have_no_position_check() -> None:
    assert reason(seq=10**6, new_tokens=10**6, model="meta-llama/Llama-3.2-1B") is None


def test_gpt2_tiny_has_no_flex_attention() -> None:
    assert reason(attn="flex_attention", model="synthetic:gpt2-tiny") == (
        "synthetic:gpt2-tiny does not support flex_attention (supports: eager, sdpa, flash_attention_2, hub kernels)"
    )
    assert reason(attn="sdpa", model="synthetic:gpt2-tiny") is None


def test_sleep_preset_limits() -> None:
    sleep = "synthetic:sleep"
    assert reason(model=sleep, attn="eager") is None
    assert reason(model=sleep, attn="sdpa") == "synthetic:sleep does not support sdpa (supports: eager)"
    assert reason(model=sleep, attn="eager", mode="default") == "synthetic:sleep cannot be compiled"
    assert (
        reason(model=sleep, attn="eager", cb=True) == "synthetic:sleep does not support continuous batching"
    )


def test_first_matching_rule_wins() -> None:
    # On cpu with continuous batching and reduce-overhead, the CB rule comes before the cpu rule.
    assert reason(mode="reduce-overhead", cb=True, caps=CPU).startswith("continuous batching compiles only")
    # A preset limitation is reported before a machine limitation.
    assert reason(attn="flex_attention", model="synthetic:gpt2-tiny", caps=CPU).startswith(
        "synthetic:gpt2-tiny does not support flex_attention"
    )


def test_skipped_cells_stay_in_the_plan_as_asked() -> None:
    plan = build_plan(
        config(attn_implementation=["sdpa", "flash_attention_2"], compile=[None, "default"]), CPU
    )
    assert [combo(c) for c in plan.cells] == [
        ("sdpa", None, False, False),
        ("sdpa", "default", False, False),
        ("flash_attention_2", None, False, False),
        ("flash_attention_2", "default", False, False),
    ]
    assert [c.runnable for c in plan.cells] == [True, True, False, False]
    assert plan.skipped[0].skip_reason == "flash_attention_2 needs a CUDA GPU (device is cpu)"
    assert [c.name for c in plan.runnable] == [
        "sdpa, no compile, b1 s128 n128",
        "sdpa, compile default, b1 s128 n128",
    ]
    assert plan.warnings == []


def test_coverage_plan_keeps_unrunnable_combos_on_cpu() -> None:
    plan = build_plan(config(coverage=1), CPU)
    assert [combo(c) for c in plan.cells] == coverage_combos(1)
    assert [c.skip_reason for c in plan.cells] == [
        None,
        "flash_attention_2 needs a CUDA GPU (device is cpu)",
        None,
        "flash_attention_2 needs a CUDA GPU (device is cpu)",
    ]


def test_skip_reason_depends_on_the_shape() -> None:
    plan = build_plan(config(sequence_length=[4000, 4090], num_tokens_to_generate=[8, 16]), CPU)
    assert [(c.sequence_length, c.num_tokens_to_generate, c.runnable) for c in plan.cells] == [
        (4000, 8, True),
        (4000, 16, True),
        (4090, 8, False),
        (4090, 16, False),
    ]


def test_plan_with_nothing_runnable_warns() -> None:
    plan = build_plan(config(attn_implementation="flash_attention_2"), CPU)
    assert plan.runnable == []
    assert len(plan.skipped) == 1
    assert plan.warnings == ["no cell in this plan can run on this machine; see the skip reasons"]


# ---------------------------------------------------------------------------------------------
# Stable ids
# ---------------------------------------------------------------------------------------------


def test_same_config_gives_same_ids() -> None:
    first = [c.cell_id for c in build_plan(cross_config(), CPU).cells]
    second = [c.cell_id for c in build_plan(cross_config(), CPU).cells]
    assert first == second


@pytest.mark.parametrize(
    "change",
    [
        {"warmup_iterations": 0},
        {"measurement_iterations": 3},
        {"run_name": "another-name"},
        {"seed": 1234},
        {"gpu_monitoring": False},
        {"cell_timeout_s": 12.5},
        {"output": "elsewhere"},
        {"trust_remote_code": True},
    ],
    ids=lambda change: next(iter(change)),
)
def test_ids_ignore_how_a_cell_is_measured(change: dict[str, Any]) -> None:
    base = [c.cell_id for c in build_plan(cross_config(), CPU).cells]
    changed = cross_config().model_copy(update=change)
    assert getattr(changed, next(iter(change))) == next(iter(change.values()))
    assert [c.cell_id for c in build_plan(changed, CPU).cells] == base


BASE_ONE = {"batch_size": 2, "sequence_length": 64, "num_tokens_to_generate": 16, "compile": "default"}


@pytest.mark.parametrize(
    "change",
    [
        {"model": "synthetic:llama-small"},
        {"model_config": {"num_hidden_layers": 1}},
        {"model": "meta-llama/Llama-3.2-1B", "revision": "main"},
        {"dtype": "float16"},
        {"attn_implementation": "eager"},
        {"compile": "max-autotune"},
        {"compile": None},
        {"compile_fullgraph": True},
        {"compile_dynamic": False},
        {"kernelize": True},
        {"continuous_batching": True},
        {"batch_size": 3},
        {"sequence_length": 65},
        {"num_tokens_to_generate": 17},
    ],
    ids=lambda change: "+".join(change),
)
def test_ids_change_with_what_defines_a_cell(change: dict[str, Any]) -> None:
    base = only_cell(config(**BASE_ONE)).cell_id
    assert only_cell(config(**{**BASE_ONE, **change})).cell_id != base


def test_ids_change_with_the_revision() -> None:
    hub = {**BASE_ONE, "model": "meta-llama/Llama-3.2-1B"}
    assert (
        only_cell(config(**hub, revision="main")).cell_id != only_cell(config(**hub, revision="v2")).cell_id
    )


def test_ids_change_with_the_device() -> None:
    cfg = config(**BASE_ONE, dtype="float32")
    assert only_cell(cfg, CPU).cell_id != only_cell(cfg, CUDA_FULL).cell_id


def test_ids_ignore_installed_packages() -> None:
    cfg = config(**BASE_ONE)
    assert only_cell(cfg, CUDA_BARE).cell_id == only_cell(cfg, CUDA_FULL).cell_id


def test_ids_use_the_resolved_dtype() -> None:
    auto = config(**BASE_ONE)
    assert (
        only_cell(auto, CUDA_FULL).cell_id
        == only_cell(config(**BASE_ONE, dtype="bfloat16"), CUDA_FULL).cell_id
    )
    assert only_cell(auto, CPU).cell_id == only_cell(config(**BASE_ONE, dtype="float32"), CPU).cell_id


def test_ids_ignore_model_config_key_order() -> None:
    a = config(model_config={"hidden_size": 32, "num_hidden_layers": 1})
    b = config(model_config={"num_hidden_layers": 1, "hidden_size": 32})
    assert only_cell(a).cell_id == only_cell(b).cell_id


def test_ids_do_not_depend_on_the_other_cells() -> None:
    alone = only_cell(config(batch_size=4, attn_implementation="eager")).cell_id
    among = build_plan(config(batch_size=[1, 4], attn_implementation=["sdpa", "eager"]), CPU).cells
    assert among[3].name == "eager, no compile, b4 s128 n128"
    assert among[3].cell_id == alone


def test_pinned_ids() -> None:
    """Literal ids: if one changes, results of earlier runs no longer match; bump CELL_ID_VERSION knowingly."""
    defaults_on_cpu = only_cell(config(), CPU)
    assert defaults_on_cpu.name == "sdpa, no compile, b1 s128 n128"
    assert defaults_on_cpu.cell_id == "d8a30a57f4880378"

    flash_cb = only_cell(
        config(
            attn_implementation="flash_attention_2",
            compile="default",
            continuous_batching=True,
            batch_size=4,
            sequence_length=256,
            num_tokens_to_generate=32,
        ),
        CUDA_FULL,
    )
    assert flash_cb.name == "flash_attention_2, compile default, cb, b4 s256 n32"
    assert flash_cb.cell_id == "45e42882e37ccb3c"

    hub = only_cell(
        config(model="meta-llama/Llama-3.2-1B", revision="main", attn_implementation="eager"), CPU
    )
    assert hub.cell_id == "5258be58df9dc5ac"


def test_names_say_what_runs_in_words() -> None:
    """A name is read, not parsed: the compile mode in words, no '/' or ':' to decode."""
    assert combo_name("eager", None, False, False) == "eager, no compile"
    assert combo_name("sdpa", "default", True, True) == "sdpa, compile default, kernels, cb"
    assert cell_name("sdpa", "max-autotune", False, False, 8, 2048, 128) == (
        "sdpa, compile max-autotune, b8 s2048 n128"
    )


# ---------------------------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------------------------


def test_dtype_auto_resolution() -> None:
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16"
    assert only_cell(config(), CUDA_FULL).dtype == "bfloat16"
    assert only_cell(config(), CPU).dtype == "float32"
    assert only_cell(config(dtype="float16"), CUDA_FULL).dtype == "float16"


# ---------------------------------------------------------------------------------------------
# A large plan, planned without torch
# ---------------------------------------------------------------------------------------------


def test_large_plan_json_without_torch(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(
        "model: synthetic:llama-tiny\n"
        "device: cpu\n"
        "coverage: 4\n"
        "batch_size: [1, 2, 4, 8, 16]\n"
        "sequence_length: [16, 32, 64, 128, 256]\n"
        "num_tokens_to_generate: [8, 16, 32, 64, 128]\n"
    )
    code = (
        "import sys; from bench.cli import main; "
        f"rc = main(['plan', '--config', {str(path)!r}, '--json']); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFBENCH_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    payload = json.loads(proc.stdout)
    cells = payload["cells"]
    assert len(cells) >= 10_000
    assert len(cells) == 80 * 5 * 5 * 5
    assert len({c["cell_id"] for c in cells}) == len(cells)
    assert payload["capabilities"]["device"] == "cpu"


# ---------------------------------------------------------------------------------------------
# Listed combinations
# ---------------------------------------------------------------------------------------------


def test_listed_combinations_run_as_listed_at_every_shape() -> None:
    listed = [
        {"attn_implementation": "eager", "compile": "default", "compile_fullgraph": True},
        {"attn_implementation": "sdpa", "continuous_batching": True},
        {"attn_implementation": "eager", "compile": "default"},  # the config's fullgraph (false)
    ]
    plan = build_plan(config(combinations=listed, batch_size=[1, 2]), CUDA_FULL)
    got = [(combo(c), c.compile_fullgraph, c.batch_size) for c in plan.cells]
    assert got == [
        (("eager", "default", False, False), True, 1),
        (("eager", "default", False, False), True, 2),
        (("sdpa", None, False, True), False, 1),
        (("sdpa", None, False, True), False, 2),
        (("eager", "default", False, False), False, 1),
        (("eager", "default", False, False), False, 2),
    ]
    # the same combination listed twice is one cell
    twice = build_plan(config(combinations=[listed[1], listed[1]]), CUDA_FULL)
    assert len(twice.cells) == 1


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"combinations": [], "model": TINY}, "combinations = []: the list is empty"),
        (
            {"combinations": [{"attn_implementation": "sdpa"}], "coverage": 1},
            "cannot be combined with coverage=1",
        ),
        (
            {"combinations": [{"attn_implementation": "sdpa"}], "attn_implementation": "eager"},
            "cannot be combined with combinations",
        ),
        ({"combinations": [{"attn_implementation": "paged"}]}, "combinations.0.attn_implementation"),
        ({"combinations": [{"attn_implementation": "sdpa", "kernels": True}]}, "combinations.0.kernels"),
    ],
)
def test_listed_combinations_are_checked(fields: dict[str, Any], words: str) -> None:
    from bench.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate({"model": TINY, **fields}, {k: "file x" for k in fields}, "test")
    assert words in str(info.value)


# ---------------------------------------------------------------------------------------------
# Attention kernels from the Hub
# ---------------------------------------------------------------------------------------------

FA2_KERNEL = "kernels-community/flash-attn2@v4"
# transformers 5.24 loads hub kernels only with kernels >= 0.18.2, < 0.19.0
REQUIRED = ("0.18.2", "0.19.0")
KERNELS_OK = Capabilities("cuda", False, True, kernels_version="0.18.2", kernels_required=REQUIRED)


def test_a_hub_kernel_runs_where_a_compatible_kernels_is_installed() -> None:
    assert reason(attn=FA2_KERNEL, caps=KERNELS_OK) is None
    assert reason(attn="kernels-community/flash-attn2", caps=KERNELS_OK) is None
    # the range is [min, max), as transformers compares it
    assert reason(attn=FA2_KERNEL, caps=replace(KERNELS_OK, kernels_version="0.18.9")) is None
    # a range the measured transformers does not name: the worker's own check decides
    assert reason(attn=FA2_KERNEL, caps=replace(KERNELS_OK, kernels_required=None)) is None


def test_a_hub_kernel_needs_a_gpu() -> None:
    on_cpu = replace(KERNELS_OK, device="cpu")
    assert (
        reason(attn=FA2_KERNEL, caps=on_cpu)
        == f"{FA2_KERNEL} is a hub kernel: it needs a CUDA GPU (device is cpu)"
    )


def test_a_hub_kernel_without_kernels_says_which_version_transformers_asks_for() -> None:
    missing = replace(KERNELS_OK, kernels=False, kernels_version=None)
    assert reason(attn=FA2_KERNEL, caps=missing) == (
        f"{FA2_KERNEL} is a hub kernel: it needs the kernels package (transformers asks for "
        "kernels >= 0.18.2, < 0.19.0), which is not installed"
    )
    assert reason(attn=FA2_KERNEL, caps=CUDA_BARE) == (
        f"{FA2_KERNEL} is a hub kernel: it needs the kernels package, which is not installed"
    )


@pytest.mark.parametrize("installed", ["0.17.2", "0.19.0", "0.18.2rc1", "not-a-version", None])
def test_a_hub_kernel_with_kernels_outside_the_range_is_skipped_naming_both(installed: str | None) -> None:
    text = reason(attn=FA2_KERNEL, caps=replace(KERNELS_OK, kernels_version=installed))
    assert text == (
        f"{FA2_KERNEL} is a hub kernel: transformers loads hub kernels only with kernels >= 0.18.2, < 0.19.0, "
        f"and kernels {installed or '(version unknown)'} is installed"
    )


def test_offline_a_hub_kernel_must_be_in_the_kernels_cache() -> None:
    offline = replace(KERNELS_OK, offline_kernels_cache="/opt/kernels")
    assert reason(attn=FA2_KERNEL, caps=offline) == (
        f"{FA2_KERNEL} is a hub kernel, HF_HUB_OFFLINE is set, and {FA2_KERNEL} is not in the kernels "
        "cache /opt/kernels: pre-fetch it (the image: --build-arg HUB_KERNELS) or unset HF_HUB_OFFLINE"
    )
    assert reason(attn="kernels-community/flash-attn2", caps=offline) == (
        "kernels-community/flash-attn2 is a hub kernel, HF_HUB_OFFLINE is set, and no version branch "
        "(v1, v2, ...) of kernels-community/flash-attn2 is in the kernels cache /opt/kernels: pre-fetch it "
        "(the image: --build-arg HUB_KERNELS) or unset HF_HUB_OFFLINE"
    )
    commit = "0123456789abcdef0123456789abcdef01234567"
    cached = replace(
        offline, cached_hub_kernels=frozenset({FA2_KERNEL, f"kernels-community/flash-attn2@{commit}"})
    )
    assert reason(attn=FA2_KERNEL, caps=cached) is None
    assert reason(attn=f"kernels-community/flash-attn2@{commit}:fn", caps=cached) is None
    assert reason(attn="kernels-community/flash-attn2", caps=cached) is None  # v4, the version branch
    assert "not in the kernels cache" in reason(attn="kernels-community/flash-attn2@v3", caps=cached)
    assert "not in the kernels cache" in reason(attn="kernels-community/vllm-flash-attn3@v1", caps=cached)
    only_commit = replace(offline, cached_hub_kernels=frozenset({f"kernels-community/flash-attn2@{commit}"}))
    assert "no version branch" in reason(attn="kernels-community/flash-attn2", caps=only_commit)
    # LOCAL_KERNELS: kernels loads that directory for any revision of the repo
    local = replace(offline, cached_hub_kernels=frozenset({"kernels-community/flash-attn2"}))
    assert reason(attn="kernels-community/flash-attn2@v3", caps=local) is None


def test_synthetic_models_take_hub_kernels_where_they_take_flash_attention_2() -> None:
    assert reason(attn=FA2_KERNEL, model="synthetic:gpt2-tiny", caps=KERNELS_OK) is None
    assert reason(attn=FA2_KERNEL, model="synthetic:sleep", caps=KERNELS_OK) == (
        f"synthetic:sleep does not support {FA2_KERNEL} (supports: eager)"
    )


def test_a_flash_kernel_is_flash_attention_for_compile_and_continuous_batching() -> None:
    """transformers reads a kernel named *flash* as flash attention: compiled only with continuous
    batching, like flash_attention_2; continuous batching runs no other kernel."""
    assert reason(attn=FA2_KERNEL, mode="default", caps=KERNELS_OK) == (
        f"{FA2_KERNEL} with torch.compile is not supported by plain generate"
    )
    assert reason(attn=FA2_KERNEL, mode="default", cb=True, caps=KERNELS_OK) is None
    assert reason(attn=FA2_KERNEL, cb=True, caps=KERNELS_OK) is None
    other = "kernels-staging/msa@v1"
    assert reason(attn=other, mode="default", caps=KERNELS_OK) is None
    assert reason(attn=other, cb=True, caps=KERNELS_OK) == (
        "continuous batching runs eager, sdpa or a flash attention only, and transformers does not read "
        f"{other} as flash attention (no 'flash' in its name)"
    )


def test_hub_kernel_cells_are_their_own_cells_and_no_coverage_level_adds_them() -> None:
    plan = build_plan(
        config(attn_implementation=["flash_attention_2", FA2_KERNEL, "kernels-community/flash-attn2"]),
        KERNELS_OK,
    )
    assert [c.attn_implementation for c in plan.cells] == [
        "flash_attention_2",
        FA2_KERNEL,
        "kernels-community/flash-attn2",
    ]
    assert len({c.cell_id for c in plan.cells}) == 3
    assert [c.skip_reason for c in plan.cells] == [
        "flash_attention_2 needs the flash-attn package, which is not installed",
        None,
        None,
    ]
    assert plan.cells[1].name == f"{FA2_KERNEL}, no compile, b1 s128 n128"
    for level in range(5):
        assert {attn for attn, *_ in coverage_combos(level)} <= set(ATTN_IMPLEMENTATIONS)
    caps = plan.to_dict()["capabilities"]
    assert (caps["kernels_version"], caps["kernels_required"], caps["offline_kernels_cache"]) == (
        "0.18.2",
        REQUIRED,
        None,
    )


# ---------------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------------

QUANT_PACKAGES = {"torchao": "0.18.0", "accelerate": "1.15.0", "bitsandbytes": "0.50.2"}
QUANT_MINIMUMS = {"torchao": "0.15.0", "accelerate": "1.1.0", "bitsandbytes": "0.46.1"}
CPU_QUANT = replace(CPU, quantization_packages=QUANT_PACKAGES, quantization_minimums=QUANT_MINIMUMS)
CUDA_QUANT = replace(CUDA_FULL, quantization_packages=QUANT_PACKAGES, quantization_minimums=QUANT_MINIMUMS)
ALL_METHODS = [
    "none",
    "torchao-int8-weight-only",
    "torchao-int8-weight-int8-activation",
    "bnb-8bit",
    "bnb-4bit",
]


def test_unquantized_cells_keep_their_ids_and_names() -> None:
    plain = only_cell(config(), CPU)
    listed = build_plan(config(quantization=["none", "torchao-int8-weight-only"]), CPU_QUANT).cells
    assert listed[0].cell_id == plain.cell_id == "d8a30a57f4880378"
    assert listed[0].name == plain.name and listed[0].quantization == "none"
    quantized = listed[1]
    assert quantized.cell_id != plain.cell_id
    assert quantized.name == "sdpa, no compile, torchao-int8-weight-only, b1 s128 n128"
    assert quantized.runnable


def test_pinned_quantized_id() -> None:
    """Literal: the id of a quantized cell hashes its method with the rest."""
    cell = only_cell(config(quantization="bnb-4bit"), CUDA_QUANT)
    assert cell.cell_id == "0ccdf9e362443d86"
    assert cell.runnable


def test_every_method_runs_on_cuda_with_its_packages() -> None:
    plan = build_plan(config(quantization=ALL_METHODS), CUDA_QUANT)
    assert [c.quantization for c in plan.cells] == ALL_METHODS
    assert all(c.runnable for c in plan.cells), [c.skip_reason for c in plan.cells]
    assert len({c.cell_id for c in plan.cells}) == len(ALL_METHODS)


def test_quantization_crosses_coverage_and_listed_combinations() -> None:
    listed = config(
        combinations=[{"attn_implementation": "eager"}, {"attn_implementation": "sdpa"}],
        quantization=["none", "torchao-int8-weight-only"],
    )
    assert len(build_plan(listed, CPU_QUANT).cells) == 4
    covered = build_plan(config(coverage=1, quantization=["none", "bnb-8bit"]), CUDA_QUANT)
    assert len(covered.cells) == 2 * len(coverage_combos(1))


@pytest.mark.parametrize(
    ("method", "caps", "fragment"),
    [
        ("bnb-4bit", CPU_QUANT, "bnb-4bit: tfbench runs bitsandbytes on a CUDA GPU only (device is cpu)"),
        ("bnb-8bit", CPU_QUANT, "CUDA GPU only"),
        (
            "torchao-int8-weight-only",
            CPU,
            "torchao-int8-weight-only needs the torchao package, which is not installed",
        ),
        (
            "torchao-int8-weight-only",
            replace(CPU_QUANT, quantization_packages={**QUANT_PACKAGES, "torchao": None}),
            "needs the torchao package >= 0.15.0, which is not installed",
        ),
        (
            "torchao-int8-weight-only",
            replace(CPU_QUANT, quantization_packages={**QUANT_PACKAGES, "torchao": "0.14.1"}),
            "transformers quantizes with torchao >= 0.15.0 only, and torchao 0.14.1 is installed",
        ),
        (
            "bnb-4bit",
            replace(CUDA_QUANT, quantization_packages={**QUANT_PACKAGES, "bitsandbytes": None}),
            "bnb-4bit needs the bitsandbytes package >= 0.46.1, which is not installed",
        ),
        (
            "bnb-8bit",
            replace(CUDA_QUANT, quantization_packages={**QUANT_PACKAGES, "bitsandbytes": "0.45.5"}),
            "bitsandbytes >= 0.46.1 only, and bitsandbytes 0.45.5 is installed",
        ),
        (
            "bnb-8bit",
            replace(CUDA_QUANT, quantization_packages={**QUANT_PACKAGES, "accelerate": "1.0.1"}),
            "accelerate >= 1.1.0 only, and accelerate 1.0.1 is installed",
        ),
    ],
)
def test_a_method_without_its_package_or_device_is_skipped_with_the_reason(
    method: str, caps: Capabilities, fragment: str
) -> None:
    cell = only_cell(config(quantization=method), caps)
    assert cell.skip_reason is not None and fragment in cell.skip_reason, cell.skip_reason


def test_bitsandbytes_is_not_compiled_and_torchao_is() -> None:
    plan = build_plan(
        config(compile="default", quantization=["bnb-4bit", "torchao-int8-weight-only"]), CUDA_QUANT
    )
    bnb, torchao = plan.cells
    assert bnb.skip_reason == "bnb-4bit with torch.compile: transformers does not compile bitsandbytes models"
    assert torchao.runnable


@pytest.mark.parametrize(
    ("model", "method", "fragment"),
    [
        ("synthetic:sleep", "torchao-int8-weight-only", "synthetic:sleep has no weights to quantize"),
        ("synthetic:gpt2-tiny", "torchao-int8-weight-only", "torchao quantizes nn.Linear layers"),
    ],
)
def test_synthetic_models_a_method_cannot_quantize_are_skipped(
    model: str, method: str, fragment: str
) -> None:
    extra = {"attn_implementation": "eager"} if model == "synthetic:sleep" else {}
    cell = only_cell(config(model=model, quantization=method, **extra), CPU_QUANT)
    assert cell.skip_reason is not None and fragment in cell.skip_reason
    gpt2_bnb = only_cell(config(model="synthetic:gpt2-tiny", quantization="bnb-8bit"), CUDA_QUANT)
    assert gpt2_bnb.runnable  # bitsandbytes converts GPT-2's Conv1D layers too


def test_a_record_without_quantization_reads_as_unquantized() -> None:
    data = only_cell(config(), CPU).to_dict()
    del data["quantization"]
    assert Cell.from_dict(data).quantization == "none"


# ------------------------------------------------------------------------------ tensor parallelism


def test_tp_size_1_keeps_every_cell_id_and_name() -> None:
    plain = build_plan(config(batch_size=[1, 2], continuous_batching=[False, True]), CPU)
    with_tp = build_plan(config(batch_size=[1, 2], continuous_batching=[False, True], tp_size=[1, 2]), CPU)
    ones = [c for c in with_tp.cells if c.tp_size == 1]
    assert [(c.cell_id, c.name) for c in ones] == [(c.cell_id, c.name) for c in plain.cells]
    twos = [c for c in with_tp.cells if c.tp_size == 2]
    assert len(twos) == len(ones) and not {c.cell_id for c in twos} & {c.cell_id for c in ones}
    assert all(c.name.endswith(", tp2") for c in twos)
    # A record of an earlier version, without tp_size, reads as tp_size 1.
    old = {k: v for k, v in ones[0].to_dict().items() if k != "tp_size"}
    assert Cell.from_dict(old).tp_size == 1


def test_gpus_needed_is_one_per_rank_on_cuda() -> None:
    caps = replace(CUDA_BARE, gpu_count=8)
    cells = build_plan(config(tp_size=[1, 4]), caps).cells
    assert [c.gpus_needed for c in cells] == [1, 4]
    assert [c.gpus_needed for c in build_plan(config(tp_size=[1, 2]), CPU).cells] == [0, 0]


@pytest.mark.parametrize(
    ("fields", "caps", "reason"),
    [
        ({"tp_size": 4}, replace(CUDA_BARE, gpu_count=2), "tp_size 4 needs 4 GPUs, and 2 are visible"),
        ({"tp_size": 8}, replace(CPU, cpu_count=2), "tp_size 8 on the CPU needs a core per rank, and 2"),
        (
            {"tp_size": 2, "model": "synthetic:gpt2-tiny"},
            replace(CUDA_BARE, gpu_count=2),
            "synthetic:gpt2-tiny has no tp plan",
        ),
        (
            {"tp_size": 4},
            replace(CUDA_BARE, gpu_count=4),
            "num_key_value_heads = 2 is not divisible by tp_size 4",  # llama-tiny: 4 heads, 2 kv heads
        ),
        ({"tp_size": 2, "kernelize": True}, replace(CUDA_FULL, gpu_count=2), "kernelize with tp_size > 1"),
        (
            {"tp_size": 2, "model_config": {"num_attention_heads": 3, "num_key_value_heads": 3}},
            replace(CUDA_BARE, gpu_count=2),
            "num_attention_heads = 3 is not divisible by tp_size 2",
        ),
    ],
)
def test_tp_skips_say_why(fields: dict[str, Any], caps: Capabilities, reason: str) -> None:
    (cell,) = build_plan(config(**fields), caps).cells
    assert cell.skip_reason is not None and reason in cell.skip_reason


def test_tp2_runs_on_two_cpus_and_with_continuous_batching() -> None:
    # transformers shards the paged cache and schedules over a CPU group under tensor parallelism
    # (generation/continuous_batching/distributed.py): not a skip.
    cells = build_plan(config(tp_size=2, continuous_batching=[False, True]), replace(CPU, cpu_count=2)).cells
    assert [c.skip_reason for c in cells] == [None, None]


def test_a_quantized_tensor_parallel_cell_is_skipped_as_untried() -> None:
    caps = replace(CUDA_QUANT, gpu_count=2)
    plan = build_plan(config(quantization=["none", "bnb-4bit"], tp_size=[1, 2]), caps)
    by = {(c.quantization, c.tp_size): c for c in plan.cells}
    assert by[("none", 2)].runnable and by[("bnb-4bit", 1)].runnable
    assert by[("bnb-4bit", 2)].skip_reason == "bnb-4bit with tp_size > 1 is not measured: the pair is untried"
