"""Loading what a cell measures: a hub or local model, or a synthetic preset built offline.

Imported only in worker processes (it imports torch and transformers).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from bench.config.presets import PRESETS, Preset, preset_for
from bench.worker import quantize

# The fixed prompt every cell tokenizes, repeats and cuts to exactly sequence_length tokens.
DEFAULT_PROMPT = (
    "The history of computing is a history of measurement. Early machines were judged by how many "
    "additions they could perform in a second, and engineers argued about whether a benchmark "
    "measured the machine or the skill of the person who wrote it. Today the questions are the same: "
    "is the number repeatable, does it carry its spread, and does it measure the work the user will "
    "actually run? A language model that answers a question first reads the whole prompt, which is "
    "bound by arithmetic, then writes one token at a time, which is bound by how fast the weights "
    "and the cache stream out of memory. Both phases deserve an honest clock."
)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SleepConfig(PretrainedConfig):
    model_type = "tfbench-sleep"

    def __init__(
        self,
        prefill_sleep_s: float = 0.05,
        decode_sleep_s: float = 0.01,
        vocab_size: int = 256,
        max_position_embeddings: int = 1_000_000,
        **kwargs: Any,
    ):
        self.prefill_sleep_s = prefill_sleep_s
        self.decode_sleep_s = decode_sleep_s
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.num_hidden_layers = 1
        super().__init__(**kwargs)


class SleepModel(PreTrainedModel, GenerationMixin):
    """A causal LM whose forward takes a known time: prefill_sleep_s for the prompt, decode_sleep_s per token.

    It predicts (last token + 1) mod vocab, so greedy decoding is deterministic. The harness's
    timing accuracy is checked against it: ttft should read prefill_sleep_s, tpot decode_sleep_s.
    """

    config_class = SleepConfig
    main_input_name = "input_ids"

    def __init__(self, config: SleepConfig):
        super().__init__(config)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device and a dtype
        self.post_init()

    def forward(self, input_ids: torch.Tensor, cache: Any = None, **kwargs: Any) -> CausalLMOutputWithPast:
        # The first call with a given cache object is the prefill; generate reuses it for every step.
        if cache is not None:
            prefill = not getattr(cache, "_tfbench_prefilled", False)
            cache._tfbench_prefilled = True
        else:
            prefill = input_ids.shape[1] > 1
        # TFBENCH_SLEEP_SCALE slows the decode steps down as a code change would, without changing
        # the cell (its id is the same): how the verdict benchmarks plant a known regression.
        decode = self.config.decode_sleep_s * float(os.environ.get("TFBENCH_SLEEP_SCALE") or 1.0)
        time.sleep(self.config.prefill_sleep_s if prefill else decode)
        batch, length = input_ids.shape
        logits = torch.zeros(
            batch, length, self.config.vocab_size, dtype=self.anchor.dtype, device=input_ids.device
        )
        nxt = ((input_ids + 1) % self.config.vocab_size).unsqueeze(-1)
        logits.scatter_(2, nxt, 1.0)
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)


def synthetic_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the default prompt, made offline in milliseconds.

    Its ids stay below the model's vocab_size, so every input is valid for the model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    size = max(len(specials) + 1, min(vocab_size, 512))
    alphabet = pre_tokenizers.ByteLevel.alphabet() if size >= 256 + len(specials) + 1 else []
    trainer = trainers.BpeTrainer(
        vocab_size=size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator([DEFAULT_PROMPT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _hf_config(preset: Preset, overrides: dict[str, Any]) -> PretrainedConfig:
    settings = {**preset.config, **overrides}
    if preset.architecture == "llama":
        return LlamaConfig(**settings)
    if preset.architecture == "gpt2":
        return GPT2Config(**settings)
    if preset.architecture == "sleep":
        return SleepConfig(**settings)
    raise ValueError(f"unknown architecture {preset.architecture!r}")


def load(
    model: str,
    revision: str | None,
    model_config: dict[str, Any],
    dtype: str,
    device: str,
    attn_implementation: str,
    trust_remote_code: bool,
    seed: int,
    quantization: str = "none",
) -> tuple[torch.nn.Module, Any]:
    """The model in eval mode on `device`, its weights quantized as `quantization` says, and its tokenizer."""
    torch_dtype = TORCH_DTYPES[dtype]
    preset = preset_for(model)
    if preset is not None:
        torch.manual_seed(seed)
        hf_config = _hf_config(preset, model_config)
        if preset.architecture == "sleep":
            net = SleepModel(hf_config).to(device=device, dtype=torch_dtype)
        else:

            def build() -> torch.nn.Module:
                # Built directly on the target device: random init of an 8B model on the CPU takes minutes.
                with torch.device(device):
                    return AutoModelForCausalLM.from_config(
                        hf_config, dtype=torch_dtype, attn_implementation=attn_implementation
                    )

            if quantization == "none":
                net = build()
            else:
                net = quantize.build_quantized(
                    build, hf_config, quantization, torch_dtype, device, attn_implementation
                )
        tokenizer = synthetic_tokenizer(hf_config.vocab_size)
        return net.eval(), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
    net = AutoModelForCausalLM.from_pretrained(
        model,
        revision=revision,
        dtype=torch_dtype,
        attn_implementation=attn_implementation,
        device_map=device,
        trust_remote_code=trust_remote_code,
        quantization_config=quantize.quantization_config(quantization, torch_dtype),
    )
    return net.eval(), tokenizer


def prompt_ids(tokenizer: Any, batch_size: int, sequence_length: int) -> list[list[int]]:
    """Exactly batch_size rows of exactly sequence_length token ids: the prompt tokenized, repeated and cut."""
    ids = tokenizer(DEFAULT_PROMPT, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the tokenizer turned the default prompt into no tokens")
    bos = getattr(tokenizer, "bos_token_id", None)
    row: list[int] = [bos] if bos is not None else []
    while len(row) < sequence_length:
        row.extend(ids)
    row = row[:sequence_length]
    return [list(row) for _ in range(batch_size)]


def parameter_count(net: torch.nn.Module) -> int:
    # The weights' own element count, also where bitsandbytes packs two 4-bit values in a byte.
    return sum(quantize.logical_numel(p) for p in net.parameters())


__all__ = [
    "PRESETS",
    "load",
    "prompt_ids",
    "synthetic_tokenizer",
    "SleepModel",
    "SleepConfig",
    "parameter_count",
]
