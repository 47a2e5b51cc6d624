"""What a cell needs of the measured transformers: skipped with the reason when it lacks it, renamed
options translated. Run against the installed release and against stand-ins of older ones."""

from __future__ import annotations

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
