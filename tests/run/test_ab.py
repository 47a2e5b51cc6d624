"""The pure parts of `tfbench ab`: the order of the sides, and what makes two sides incomparable."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from bench.config.schema import BenchConfig, LoadedConfig
from bench.errors import UserError
from bench.plan.matrix import Capabilities, build_plan
from bench.run.ab import check_same, side_configs, step_order


def test_abba_alternates_who_goes_first():
    pairs = list(itertools.islice(step_order("abba", 0), 4))
    assert pairs == [(0, 1), (1, 0), (0, 1), (1, 0)]


def test_shuffled_is_drawn_from_the_seed():
    a = list(itertools.islice(step_order("shuffled", 3), 40))
    assert a == list(itertools.islice(step_order("shuffled", 3), 40))
    assert a != list(itertools.islice(step_order("shuffled", 4), 40))
    assert {p for p in a} == {(0, 1), (1, 0)}


def _job(config, torch="2.13.0", flash_attn=False):
    plan = build_plan(config, Capabilities(device="cuda", flash_attn=flash_attn, kernels=False))
    return SimpleNamespace(full=plan, workers=SimpleNamespace(facts={"torch": torch}))


def test_same_plan_and_torch_pass():
    cfg = BenchConfig.model_validate({"model": "synthetic:llama-tiny", "device": "cuda"})
    check_same(_job(cfg), _job(cfg))


def test_different_torch_is_bad_input():
    cfg = BenchConfig.model_validate({"model": "synthetic:llama-tiny", "device": "cuda"})
    with pytest.raises(UserError, match="BASE imports torch 2.13.0, NEW torch 2.11.0"):
        check_same(_job(cfg), _job(cfg, torch="2.11.0"))


def test_different_plans_name_the_cells():
    cfg = BenchConfig.model_validate(
        {
            "model": "synthetic:llama-tiny",
            "device": "cuda",
            "attn_implementation": ["sdpa", "flash_attention_2"],
        }
    )
    with pytest.raises(UserError) as info:
        check_same(_job(cfg, flash_attn=True), _job(cfg))
    said = str(info.value)
    assert "1 differ" in said and "BASE runs it, NEW skips it" in said


def test_side_configs_set_each_source_and_refuse_one_given():
    cfg = BenchConfig.model_validate({"model": "synthetic:llama-tiny"})
    base, new = side_configs(LoadedConfig(cfg, "defaults"), "/a", "/b")
    assert (base.config.transformers_source, new.config.transformers_source) == ("/a", "/b")
    assert base.origins["transformers_source"] == "tfbench ab BASE"
    given = BenchConfig.model_validate({"model": "synthetic:llama-tiny", "transformers_source": "/x"})
    with pytest.raises(UserError, match="leave transformers_source unset"):
        side_configs(LoadedConfig(given, "cfg.yaml"), "/a", "/b")
    synced = BenchConfig.model_validate({"model": "synthetic:llama-tiny", "sync_to": "s3://bucket/runs"})
    with pytest.raises(UserError, match="leave sync_to unset"):
        side_configs(LoadedConfig(synced, "cfg.yaml"), "/a", "/b")
