"""Quantized weights: each method of bench.config.schema.QUANTIZATIONS as the quantization_config
transformers loads a model with, and what a loaded model holds (for the cell's record).

A hub or local model is quantized by from_pretrained itself. A synthetic model has no checkpoint:
its random weights are loaded through the same from_pretrained path (state_dict=), so that
transformers' own quantizer converts them as it would a checkpoint's, and the unquantized copy
is dropped before the measurement (its memory does not count: peaks are reset after it is gone).

Imported only in worker processes (it imports torch and transformers).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
from collections.abc import Callable
from typing import Any

import torch

# Methods torchao applies, as its config classes (torchao.quantization).
TORCHAO_CONFIGS = {
    "torchao-int8-weight-only": "Int8WeightOnlyConfig",
    "torchao-int8-weight-int8-activation": "Int8DynamicActivationInt8WeightConfig",
}


def quantization_config(method: str, dtype: torch.dtype) -> Any:
    """transformers' quantization config for `method` (None for "none")."""
    if method == "none":
        return None
    if method in TORCHAO_CONFIGS:
        import torchao.quantization
        from transformers import TorchAoConfig

        return TorchAoConfig(getattr(torchao.quantization, TORCHAO_CONFIGS[method])())
    if method in ("bnb-8bit", "bnb-4bit"):
        from transformers import BitsAndBytesConfig

        if method == "bnb-8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        # NF4 with the cell's dtype for the matmuls: what the QLoRA and transformers docs use.
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    raise ValueError(f"unknown quantization {method!r}")


def build_quantized(
    build: Callable[[], Any], hf_config: Any, method: str, dtype: torch.dtype, device: str, attn: str
) -> Any:
    """A synthetic model, built by `build` with random weights, loaded again, quantized, through
    from_pretrained. Built here, so that nothing outside holds the unquantized one: it is freed,
    its memory given back, and the memory peaks reset after it."""
    net = build()
    weights = net.state_dict()
    cls = type(net)
    del net
    quantized = cls.from_pretrained(
        None,
        config=hf_config,
        state_dict=weights,
        quantization_config=quantization_config(method, dtype),
        dtype=dtype,
        device_map=device,
        attn_implementation=attn,
    )
    del weights
    gc.collect()
    # glibc keeps freed blocks of the unquantized weights in its heap (they are below its mmap
    # threshold once large blocks were freed): without the trim, RSS would count them (300 MB of
    # a 620 MB model's in benchmarks/quantization.py).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_memory_peaks(device)
    return quantized


def reset_memory_peaks(device: str) -> None:
    """Start the peak memory readings from now: the process's peak RSS (Linux: writing 5 to
    /proc/self/clear_refs resets the high-water mark getrusage reports) and the CUDA allocator's."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def stored_bytes(tensor: Any) -> int:
    """Bytes a parameter holds in memory, as stored: the inner tensors of a tensor subclass
    (torchao's Int8Tensor: int8 data, scales, zero points), bitsandbytes' packed data with its
    scales (Int8Params.SCB, Params4bit.quant_state.absmax). A plain tensor: numel * element size."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if callable(flatten) and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = flatten()
        return sum(stored_bytes(getattr(tensor, name)) for name in names)
    total = tensor.numel() * tensor.element_size()
    for extra in (
        getattr(tensor, "SCB", None),
        getattr(getattr(tensor, "quant_state", None), "absmax", None),
    ):
        if isinstance(extra, torch.Tensor):
            total += extra.numel() * extra.element_size()
    return total


def logical_numel(tensor: Any) -> int:
    """Elements of the weight a parameter stands for: bitsandbytes' Params4bit stores two per byte
    (its quant_state keeps the original shape); other kinds report their logical numel."""
    shape = getattr(getattr(tensor, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else tensor.numel()


def is_quantized(tensor: Any) -> bool:
    return type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.dtype in (torch.int8, torch.uint8)


def applied(net: Any, method: str, dtype: torch.dtype) -> dict[str, Any]:
    """What the loaded model holds: the method, transformers' quantization config as it serializes
    it, the weights' bytes as stored and as the unquantized dtype would hold them, and how many
    parameters were quantized."""
    params = list(net.parameters())
    config = getattr(net.config, "quantization_config", None)
    as_dict = None
    if config is not None:
        # to_dict turns torchao's config objects into dicts; default=str the rest (enums, dtypes).
        with contextlib.suppress(Exception):
            as_dict = json.loads(json.dumps(config.to_dict(), default=str))
    return {
        "method": method,
        "config": as_dict,
        "weight_bytes": sum(stored_bytes(p) for p in params),
        "unquantized_weight_bytes": sum(logical_numel(p) for p in params) * dtype.itemsize,
        "quantized_parameters": sum(1 for p in params if is_quantized(p)),
        "parameters": len(params),
    }
