"""What a cell needs of the measured transformers: skipped with the reason when it lacks it, renamed
options translated. Run against the installed release and against stand-ins of older ones."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import transformers

from bench.worker import api


def cell(**fields):
    return {"continuous_batching": False, "compile": None, "attn_implementation": "sdpa", **fields}


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"continuous_batching": True},
        {"attn_implementation": "eager", "continuous_batching": True},
        {"compile": "default"},
        {"attn_implementation": "flex_attention"},
    ],
)
def test_the_installed_release_has_what_every_cell_needs(fields):
    assert api.missing(cell(**fields)) is None


def test_continuous_batching_without_its_config_is_skipped(monkeypatch):
    # A release without it (the package's lazy module would import it on any attribute lookup).
    monkeypatch.setattr(api, "transformers", SimpleNamespace(__version__="5.0.0"))
    reason = api.missing(cell(continuous_batching=True))
    assert reason == "transformers 5.0.0 has no ContinuousBatchingConfig (continuous batching needs it)"
    assert api.missing(cell()) is None  # the other cells still run


def test_compile_option_missing_is_named(monkeypatch):
    class OldCompileConfig:
        def __init__(self, fullgraph=False, mode="reduce-overhead"):
            pass

    monkeypatch.setattr(transformers, "CompileConfig", OldCompileConfig)
    assert "CompileConfig has no option dynamic" in api.missing(cell(compile="default"))


def test_unknown_attention_is_named(monkeypatch):
    monkeypatch.setattr(api, "attention_names", lambda: {"eager", "sdpa"})
    assert "no attention implementation 'flex_attention'" in api.missing(
        cell(attn_implementation="flex_attention")
    )


def test_renamed_option_is_translated_and_said(monkeypatch):
    @dataclass
    class Release517Config:  # 5.17's ContinuousBatchingConfig: block_size, no auto switch
        block_size: int = 256
        num_blocks: int | None = None

    monkeypatch.setattr(transformers, "ContinuousBatchingConfig", Release517Config)
    options, notes = api.continuous_batching_options(
        {"page_size": 64, "num_blocks": 3, "auto_switch_to_flash": False}
    )
    assert options == {"block_size": 64, "num_blocks": 3}
    assert any("page_size passed as block_size" in n for n in notes)
    assert any("auto_switch_to_flash dropped" in n for n in notes)
    with pytest.raises(TypeError, match="no option 'max_batch_tokens'"):
        api.continuous_batching_options({"max_batch_tokens": 8})


def test_the_installed_release_takes_every_option_as_asked():
    options, notes = api.continuous_batching_options({"page_size": 64, "auto_switch_to_flash": False})
    assert options == {"page_size": 64, "auto_switch_to_flash": False} and notes == []


# ---- attention kernels from the Hub

FA2_KERNEL = "kernels-community/flash-attn2@v4"


def test_a_hub_kernel_is_the_name_as_given():
    assert api.expected_attn(cell(attn_implementation=FA2_KERNEL)) == {FA2_KERNEL}
    with_cb = cell(attn_implementation=FA2_KERNEL, continuous_batching=True)
    assert api.expected_attn(with_cb) == {FA2_KERNEL, f"paged|{FA2_KERNEL}"}


def test_a_hub_kernel_without_the_kernels_transformers_asks_for_is_skipped():
    """Here kernels is not installed (its release transformers asks for is not on this project's
    package index): the cell is skipped naming the range, as the plan would have."""
    from transformers.utils import import_utils

    if import_utils.is_kernels_available():
        pytest.skip("a compatible kernels is installed here")
    reason = api.missing(cell(attn_implementation=FA2_KERNEL))
    assert reason.startswith(
        f"transformers {transformers.__version__} loads hub kernels only with kernels >= "
        f"{import_utils.KERNELS_MIN_VERSION}, < {import_utils.KERNELS_MAX_VERSION}, and kernels "
    )


def test_a_hub_kernel_is_not_looked_up_among_registered_attentions(monkeypatch):
    """transformers registers a hub kernel when it loads it, after this check."""
    from transformers.utils import import_utils

    monkeypatch.setattr(import_utils, "is_kernels_available", lambda: True)
    monkeypatch.setattr(api, "attention_names", lambda: {"eager", "sdpa"})
    assert api.missing(cell(attn_implementation=FA2_KERNEL)) is None


def test_a_release_without_hub_kernels_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers.integrations.hub_kernels", None)  # import fails
    assert api.missing(cell(attn_implementation=FA2_KERNEL)) == (
        f"transformers {transformers.__version__} cannot load attention kernels from the Hub "
        "(no integrations.hub_kernels.is_kernel)"
    )


def test_every_hub_kernel_the_config_takes_is_one_to_transformers():
    from transformers.integrations.hub_kernels import is_kernel

    from bench.config.schema import hub_kernel

    for name in (FA2_KERNEL, "kernels-community/flash-attn2", "org/k@0123abc:fn", "org/k:fn", "o/k"):
        assert hub_kernel(name) is not None and is_kernel(name), name
    assert not is_kernel("flash_attention_2") and hub_kernel("flash_attention_2") is None


@pytest.fixture
def kernel_as_sdpa(monkeypatch):
    """transformers' own loading path for a hub kernel, with the download (kernels' get_kernel)
    replaced by what load_and_register_attn_kernel does with the kernel it gets: register it under
    its name, here as sdpa, so that the model also runs on the CPU. Registered in the registries'
    mappings, which monkeypatch restores (register() is that mapping's update)."""
    import transformers.modeling_utils as modeling_utils
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    loaded = []

    def load(implementation, attention_wrapper=None, allow_all_kernels=False):
        loaded.append(implementation)
        for registry in (ALL_ATTENTION_FUNCTIONS, ALL_MASK_ATTENTION_FUNCTIONS):
            monkeypatch.setitem(registry._global_mapping, implementation, registry["sdpa"])

    monkeypatch.setattr(modeling_utils, "lazy_import_flash_attention", load)
    return loaded


def test_a_model_loaded_with_a_hub_kernel_reports_it_and_passes_the_check(kernel_as_sdpa):
    import torch

    from bench.worker import models
    from bench.worker.generate import check_attn

    net, _ = models.load("synthetic:llama-tiny", None, {}, "float32", "cpu", FA2_KERNEL, False, 0)
    assert kernel_as_sdpa and set(kernel_as_sdpa) == {FA2_KERNEL}
    assert net.config._attn_implementation == FA2_KERNEL
    asked = {"model": "synthetic:llama-tiny", "attn_implementation": FA2_KERNEL, "continuous_batching": False}
    assert check_attn(net, asked, "after loading") == FA2_KERNEL
    with torch.inference_mode():
        assert net.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False).shape == (1, 5)


def test_a_model_that_swaps_in_another_kernel_fails_the_check(kernel_as_sdpa, monkeypatch):
    """A model that names its compatible flash kernels gets the first of them instead of the one
    asked for, with only a warning: the cell fails rather than measure the other kernel."""
    from transformers import LlamaForCausalLM

    from bench.worker import models
    from bench.worker.generate import CellError, check_attn

    other = "kernels-community/vllm-flash-attn3"
    monkeypatch.setattr(LlamaForCausalLM, "_compatible_flash_implementations", [other], raising=False)
    net, _ = models.load("synthetic:llama-tiny", None, {}, "float32", "cpu", FA2_KERNEL, False, 0)
    assert net.config._attn_implementation == other
    asked = {"model": "synthetic:llama-tiny", "attn_implementation": FA2_KERNEL, "continuous_batching": False}
    with pytest.raises(
        CellError, match=f"attention implementation is '{other}' after loading, not the '{FA2_KERNEL}'"
    ):
        check_attn(net, asked, "after loading")
