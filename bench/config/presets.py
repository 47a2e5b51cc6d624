"""Synthetic model presets: a real architecture with random weights, built offline.

Random weights run at the same speed as trained ones for dense models (no data-dependent
compute), so a preset measures what the real model would, with no download and no token.
This module is pure data so that planning never imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SYNTHETIC_PREFIX = "synthetic:"
# Architectures whose transformers config has a base_model_tp_plan (LlamaConfig has one; GPT2Config
# and the sleep model have none), with the head counts that plan splits across the ranks.
TP_HEAD_KEYS: dict[str, tuple[str, ...]] = {"llama": ("num_attention_heads", "num_key_value_heads")}


@dataclass(frozen=True)
class Preset:
    name: str
    architecture: str  # "llama", "gpt2" or "sleep" (the harness's own timing-accuracy model)
    config: dict[str, Any]
    description: str
    max_positions_key: str = "max_position_embeddings"
    # What the architecture supports, so the plan can skip what cannot run with a reason.
    attn_implementations: tuple[str, ...] = ("eager", "sdpa", "flex_attention", "flash_attention_2")
    compilable: bool = True
    continuous_batching: bool = True

    @property
    def tensor_parallel(self) -> bool:
        """Whether transformers has a tp plan for the architecture (tp_plan="auto" can shard it)."""
        return self.architecture in TP_HEAD_KEYS

    def heads(self, overrides: dict[str, Any] | None = None) -> dict[str, int]:
        """The head counts a tp plan splits, by config key, with the overrides applied."""
        merged = {**self.config, **(overrides or {})}
        keys = TP_HEAD_KEYS.get(self.architecture, ())
        return {k: int(merged[k]) for k in keys if merged.get(k) is not None}

    def max_positions(self, overrides: dict[str, Any] | None = None) -> int | None:
        merged = {**self.config, **(overrides or {})}
        value = merged.get(self.max_positions_key)
        return int(value) if value is not None else None


_LLAMA3_COMMON = {
    "vocab_size": 128256,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "llama-tiny",
            "llama",
            {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 1024,
                "max_position_embeddings": 4096,
            },
            "2-layer Llama, 64 wide (tests; about 0.2M parameters)",
        ),
        Preset(
            "llama-small",
            "llama",
            {
                "hidden_size": 256,
                "intermediate_size": 688,
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "vocab_size": 8192,
                "max_position_embeddings": 4096,
            },
            "4-layer Llama, 256 wide (CPU demo; about 7M parameters)",
        ),
        Preset(
            "llama-3.2-1b-shape",
            "llama",
            {
                **_LLAMA3_COMMON,
                "hidden_size": 2048,
                "intermediate_size": 8192,
                "num_hidden_layers": 16,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "tie_word_embeddings": True,
                "max_position_embeddings": 131072,
            },
            "Llama-3.2-1B shape (1.24B parameters)",
        ),
        Preset(
            "llama-3-8b-shape",
            "llama",
            {
                **_LLAMA3_COMMON,
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "max_position_embeddings": 8192,
            },
            "Llama-3-8B shape (8.03B parameters)",
        ),
        Preset(
            "gpt2-tiny",
            "gpt2",
            {
                "n_embd": 64,
                "n_layer": 2,
                "n_head": 4,
                "vocab_size": 1024,
                "n_positions": 1024,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
            "2-layer GPT-2, 64 wide (tests)",
            max_positions_key="n_positions",
            attn_implementations=("eager", "sdpa", "flash_attention_2"),
        ),
        Preset(
            "gpt2-shape",
            "gpt2",
            {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024},
            "GPT-2 small shape (124M parameters)",
            max_positions_key="n_positions",
            attn_implementations=("eager", "sdpa", "flash_attention_2"),
        ),
        Preset(
            "sleep",
            "sleep",
            {
                "prefill_sleep_s": 0.05,
                "decode_sleep_s": 0.01,
                "vocab_size": 256,
                "max_position_embeddings": 1_000_000,
            },
            "a model whose forward sleeps a known time (checks the harness's timing accuracy)",
            attn_implementations=("eager",),
            compilable=False,
            continuous_batching=False,
        ),
    ]
}


def is_synthetic(model: str) -> bool:
    return model.startswith(SYNTHETIC_PREFIX)


def preset_for(model: str) -> Preset | None:
    """The preset named by 'synthetic:NAME', or None for a hub id or a local path."""
    if not is_synthetic(model):
        return None
    return PRESETS.get(model[len(SYNTHETIC_PREFIX) :])
