"""Roofline figures of a cell: decode MBU and prefill MFU, from model arithmetic and a table of known GPUs.

As the README ("Roofline: decode MBU and prefill MFU") defines them: decode MBU = (weight bytes + KV-cache bytes read per step) / tpot / peak memory bandwidth;
prefill MFU = (2 * parameters * prompt tokens + attention FLOPs) / ttft / peak FLOP/s.
Pure functions; torch is imported only inside model_facts(), so planning and reports stay light.

Conventions (each one is what the functions below compute; tests check them against hand arithmetic):

- parameters: every unique parameter of the model (tied weights once), sum of numel().
- matmul parameters: parameters minus the lookup tables (nn.Embedding weights: token and learned position
  embeddings), which are indexed, not multiplied. A token-embedding table tied to the lm_head counts as
  a matmul parameter, because the lm_head multiplies by all of it. Norm weights and biases are counted
  too (well under 0.1% of a real model). This is PaLM's "non-embedding parameters" (Chowdhery et al.
  2022, appendix B) with the lm_head made explicit.
- prefill FLOPs = 2 * (matmul parameters - lm_head parameters) * batch * prompt tokens
  + 2 * lm_head parameters * batch * logits tokens + attention FLOPs.
  logits tokens = 1: transformers' generate() passes logits_to_keep=1 to models that accept it (Llama,
  GPT-2, ...), so the prefill computes logits for the last prompt token only; vLLM's perf.py bills
  unembedding the same way (num_logits_tokens). A model without logits_to_keep computes all of them.
- attention FLOPs (prefill) = 2 (QK^T) * 2 (multiply-add) * layers * batch * query heads * head_dim
  * prompt tokens^2, i.e. 4 * L * B * H * d * S^2, with NO halving for the causal mask: the convention of
  PaLM appendix B (6N + 12LHQT per trained token = 3 x (2N + 4LHQT) forward) and of vLLM's
  vllm/v1/metrics/perf.py (attn_qk = attn_av = 2 * heads * tokens * context * head_dim per layer).
  FlashAttention-style benchmarks halve it for causal masks; we do not, so our MFU is comparable to
  vLLM's and PaLM's, and reads up to 4LHdS^2/2 FLOPs higher than a causal-halved one.
- weight bytes read per decode step: the bytes of every parameter as stored (each at its own element
  size; a quantized weight: its quantized data and its scales, bench.worker.quantize.stored_bytes)
  except the untied lookup tables, of which one row per sequence is read (added per step as
  batch * row bytes); a token table tied to the lm_head is read whole by the lm_head.
- KV-cache bytes per token = 2 (K and V) * layers * KV heads * head_dim * dtype bytes. A cell's KV cache
  holds sequence_length + num_tokens_to_generate tokens per sequence.
- KV bytes read per decode step: decode step j (j = 1 .. N-1, N = generated tokens; the prefill made
  token 1) attends over S + j positions, its own included. Averaged over the N-1 steps: S + N/2 tokens
  per sequence. This is what the attention needs (the live context); a static cache implementation may
  touch its whole preallocated length, which would make the true traffic larger than counted here.
- Not modelled: sliding-window layers, mixture-of-experts routing (all experts counted as read),
  activations' own traffic, tensor parallelism. A quantized model's prefill FLOPs count its weights'
  elements as they are, whatever the arithmetic's precision.

Peaks are dense (no 2:4 sparsity) tensor-core figures from NVIDIA datasheets: bf16 and fp16 with fp32
accumulation (what PyTorch uses), fp32 on the CUDA cores (PyTorch's default matmul precision "highest"
keeps fp32 matmuls off TF32). Values above 1 are reported as measured, never clamped, and flagged
"exceeds_peak": a sign of a wrong table entry, a wrong timing or a convention that overcounts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------------------------------
# GPU table
# ---------------------------------------------------------------------------------------------------

TERA = 1e12
GB = 1e9  # datasheets give decimal GB and TB/s


@dataclass(frozen=True)
class GpuSpec:
    key: str  # stable id, e.g. "h100-sxm"
    name: str  # display name
    bf16_flops: float | None  # dense tensor-core FLOP/s, bf16 inputs, fp32 accumulate
    fp16_flops: float | None  # dense tensor-core FLOP/s, fp16 inputs, fp32 accumulate
    fp32_flops: float | None  # non-tensor fp32 FLOP/s
    memory_bandwidth_bytes_per_s: float
    memory_bytes: float  # nominal, as the datasheet states it
    source: str
    # Matching: the family token(s) in the NVML name, the form factor, the nominal memory in GB.
    family: str = ""
    form: str = ""
    memory_gb: int = 0


def _dense(sparse_tflops: float) -> float:
    """A datasheet figure quoted 'with sparsity' (2:4 structured sparsity doubles it) as dense FLOP/s."""
    return sparse_tflops / 2 * TERA


_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet"
_A100_DS = "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web)"
_GH200_DS = "NVIDIA GH200 Grace Hopper Superchip datasheet"

# fmt: off
GPUS: dict[str, GpuSpec] = {
    g.key: g
    for g in [
        # H100 SXM: BF16/FP16 1,979 TFLOPS* (sparse), FP32 67 TFLOPS, 80 GB HBM3, 3.35 TB/s.
        GpuSpec("h100-sxm", "H100 SXM", _dense(1979), _dense(1979), 67 * TERA, 3.35e12, 80 * GB, _H100_DS,
                "h100", "sxm", 80),
        # H100 PCIe: BF16/FP16 1,513 TFLOPS*, FP32 51 TFLOPS, 80 GB HBM2e, 2.0 TB/s.
        GpuSpec("h100-pcie", "H100 PCIe", _dense(1513), _dense(1513), 51 * TERA, 2.0e12, 80 * GB, _H100_DS,
                "h100", "pcie", 80),
        # H100 NVL (single-card datasheet): BF16/FP16 1,671 TFLOPS*, FP32 60 TFLOPS, 94 GB HBM3, 3.9 TB/s.
        # (The 2023 datasheet quoted a pair of cards: 3,958 TFLOPS*, 188 GB, 7.8 TB/s.)
        GpuSpec("h100-nvl", "H100 NVL", _dense(1671), _dense(1671), 60 * TERA, 3.9e12, 94 * GB, _H100_DS,
                "h100", "nvl", 94),
        # H200 SXM: same compute as H100 SXM (1,979 TFLOPS*, FP32 67), 141 GB HBM3e, 4.8 TB/s.
        GpuSpec("h200-sxm", "H200 SXM", _dense(1979), _dense(1979), 67 * TERA, 4.8e12, 141 * GB, _H200_DS,
                "h200", "sxm", 141),
        # H200 NVL: BF16/FP16 1,671 TFLOPS*, FP32 60 TFLOPS, 141 GB HBM3e, 4.8 TB/s.
        GpuSpec("h200-nvl", "H200 NVL", _dense(1671), _dense(1671), 60 * TERA, 4.8e12, 141 * GB, _H200_DS,
                "h200", "nvl", 141),
        # A100 (all four): BF16/FP16 312 TFLOPS dense (624*), FP32 19.5 TFLOPS; bandwidth differs by SKU.
        GpuSpec("a100-sxm-40gb", "A100 SXM4 40GB", 312 * TERA, 312 * TERA, 19.5 * TERA, 1.555e12, 40 * GB,
                _A100_DS + ": 40 GB HBM2, 1,555 GB/s", "a100", "sxm", 40),
        GpuSpec("a100-sxm-80gb", "A100 SXM4 80GB", 312 * TERA, 312 * TERA, 19.5 * TERA, 2.039e12, 80 * GB,
                _A100_DS + ": 80 GB HBM2e, 2,039 GB/s", "a100", "sxm", 80),
        GpuSpec("a100-pcie-40gb", "A100 PCIe 40GB", 312 * TERA, 312 * TERA, 19.5 * TERA, 1.555e12, 40 * GB,
                _A100_DS + ": 40 GB HBM2, 1,555 GB/s", "a100", "pcie", 40),
        GpuSpec("a100-pcie-80gb", "A100 PCIe 80GB", 312 * TERA, 312 * TERA, 19.5 * TERA, 1.935e12, 80 * GB,
                _A100_DS + ": 80 GB HBM2e, 1,935 GB/s", "a100", "pcie", 80),
        # A10: BF16/FP16 125 TFLOPS dense (250*), FP32 31.2 TFLOPS, 24 GB GDDR6, 600 GB/s.
        GpuSpec("a10", "A10", 125 * TERA, 125 * TERA, 31.2 * TERA, 600e9, 24 * GB, "NVIDIA A10 datasheet",
                "a10", "pcie", 24),
        # A10G: an AWS-only variant (EC2 G5) without an NVIDIA datasheet. Memory and bandwidth are the A10's
        # (24 GB GDDR6, 600 GB/s: AWS G5 documentation; Baseten "NVIDIA A10 vs A10G"); its tensor throughput
        # differs from the A10's and no published figure could be sourced, so its FLOP/s are unknown: MBU
        # is computed, MFU is null with a reason.
        GpuSpec("a10g", "A10G", None, None, None, 600e9, 24 * GB,
                "AWS EC2 G5 documentation; Baseten 'NVIDIA A10 vs A10G' (no NVIDIA datasheet)",
                "a10g", "pcie", 24),
        # L4: BF16/FP16 242 TFLOPS*, FP32 30.3 TFLOPS, 24 GB GDDR6, 300 GB/s.
        GpuSpec("l4", "L4", _dense(242), _dense(242), 30.3 * TERA, 300e9, 24 * GB, "NVIDIA L4 datasheet",
                "l4", "pcie", 24),
        # L40S: BF16/FP16 362.05 TFLOPS dense (733*), FP32 91.6 TFLOPS, 48 GB GDDR6, 864 GB/s.
        GpuSpec("l40s", "L40S", 362.05 * TERA, 362.05 * TERA, 91.6 * TERA, 864e9, 48 * GB,
                "NVIDIA L40S datasheet", "l40s", "pcie", 48),
        # L40: BF16/FP16 181.05 TFLOPS dense (362.1*), FP32 90.5 TFLOPS, 48 GB GDDR6, 864 GB/s.
        GpuSpec("l40", "L40", 181.05 * TERA, 181.05 * TERA, 90.5 * TERA, 864e9, 48 * GB,
                "NVIDIA L40 datasheet", "l40", "pcie", 48),
        # RTX 4090: FP16/BF16 tensor with FP32 accumulate 165.2 TFLOPS dense (330.4*); 330.3 with FP16
        # accumulate, which PyTorch does not use. FP32 82.6 TFLOPS, 24 GB GDDR6X, 1,008 GB/s.
        GpuSpec("rtx-4090", "GeForce RTX 4090", 165.2 * TERA, 165.2 * TERA, 82.6 * TERA, 1008e9, 24 * GB,
                "NVIDIA Ada Lovelace GPU architecture whitepaper (appendix)", "rtx4090", "pcie", 24),
        # RTX 6000 Ada: datasheet tensor performance 1,457 TFLOPS is FP8 with sparsity; dense BF16/FP16 with
        # FP32 accumulate is a quarter of it, 364.25 (the Ada whitepaper lists 364.2). FP32 91.1 TFLOPS,
        # 48 GB GDDR6, 960 GB/s.
        GpuSpec("rtx-6000-ada", "RTX 6000 Ada Generation", 1457 / 4 * TERA, 1457 / 4 * TERA, 91.1 * TERA,
                960e9, 48 * GB, "NVIDIA RTX 6000 Ada Generation datasheet", "rtx6000ada", "pcie", 48),
        # B200 (HGX B200, per GPU): FP16/BF16 4.5 PFLOPS*, FP32 75 TFLOPS, 180 GB HBM3e, 7.7 TB/s.
        # (The DGX B200 datasheet gives 64 TB/s for 8 GPUs, 8 TB/s each.)
        GpuSpec("b200", "B200", _dense(4500), _dense(4500), 75 * TERA, 7.7e12, 180 * GB,
                "NVIDIA HGX B200 specifications (per GPU)", "b200", "sxm", 180),
        # GH200 (the Hopper GPU of the superchip): BF16/FP16 990 dense (1,979*), FP32 67 TFLOPS;
        # 96 GB HBM3 at 4 TB/s or 144 GB HBM3e at 4.9 TB/s.
        GpuSpec("gh200-96gb", "GH200 96GB HBM3", _dense(1979), _dense(1979), 67 * TERA, 4.0e12, 96 * GB,
                _GH200_DS, "gh200", "superchip", 96),
        GpuSpec("gh200-144gb", "GH200 144GB HBM3e", _dense(1979), _dense(1979), 67 * TERA, 4.9e12, 144 * GB,
                _GH200_DS, "gh200", "superchip", 144),
    ]
}
# fmt: on

# Tokens of an NVML name that say nothing about the part.
_NEUTRAL = frozenset({"nvidia", "geforce", "tesla"})
# Per family: the tokens that identify it (all required) and the only other tokens its NVML names carry.
# A name with any other token ("RTX 4090 D", "RTX 4090 Laptop GPU", "H100 CNX") is a different part.
_FAMILIES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "h100": (frozenset({"h100"}), frozenset({"sxm", "sxm5", "pcie", "nvl", "80gb", "94gb", "hbm3", "hbm2e"})),
    "h200": (frozenset({"h200"}), frozenset({"sxm", "sxm5", "nvl", "141gb", "hbm3e"})),
    "gh200": (frozenset({"gh200"}), frozenset({"96gb", "120gb", "144gb", "480gb", "hbm3", "hbm3e"})),
    "a100": (frozenset({"a100"}), frozenset({"sxm", "sxm4", "pcie", "40gb", "80gb", "hbm2", "hbm2e"})),
    "a10g": (frozenset({"a10g"}), frozenset()),
    "a10": (frozenset({"a10"}), frozenset({"pcie"})),
    "l4": (frozenset({"l4"}), frozenset()),
    "l40s": (frozenset({"l40s"}), frozenset()),
    "l40": (frozenset({"l40"}), frozenset()),
    "rtx4090": (frozenset({"rtx", "4090"}), frozenset()),
    "rtx6000ada": (frozenset({"rtx", "6000", "ada"}), frozenset({"generation"})),
    "b200": (frozenset({"b200"}), frozenset({"sxm", "sxm6", "180gb", "192gb", "hbm3e"})),
}
_FORM_TOKENS = {"pcie": "pcie", "nvl": "nvl", "sxm": "sxm", "sxm4": "sxm", "sxm5": "sxm", "sxm6": "sxm"}
# The form a family's name implies when it names none ("NVIDIA H200" is the SXM part; the NVL says "NVL").
# H100 has none: "NVIDIA H100" alone could be any of three parts, and "H100 80GB HBM3" is the SXM (the
# PCIe card carries HBM2e), handled in _infer_form.
_DEFAULT_FORM = {"h200": "sxm", "b200": "sxm"}
# Sizes in a family's names that are not its GPU memory: the GH200's LPDDR5X ("GH200 480GB", "GH200 120GB").
_NOT_GPU_MEMORY = {"gh200": {120, 480}}
# NVML reports usable memory in bytes, a few percent above or below the datasheet's GB (GiB vs GB, ECC).
_MEMORY_TOLERANCE = 1.15


def _tokens(name: str) -> list[str]:
    text = re.sub(r"[^a-z0-9]+", " ", name.lower())
    text = re.sub(r"\b(\d+)\s*(?:gb|g)\b", r"\1gb", text)  # "80 GB", "144G" -> "80gb", "144gb"
    return text.split()


def _infer_form(family: str, toks: set[str]) -> str | None:
    forms = {_FORM_TOKENS[t] for t in toks if t in _FORM_TOKENS}
    if len(forms) > 1:
        return "conflict"
    if forms:
        return forms.pop()
    if family == "h100" and "hbm3" in toks:
        return "sxm"
    return _DEFAULT_FORM.get(family)


def _memory_ratio_distance(spec: GpuSpec, memory_total_bytes: int) -> float:
    return abs(math.log(memory_total_bytes / spec.memory_bytes))


def match_gpu_with_reason(
    nvml_name: str, memory_total_bytes: int | None = None
) -> tuple[GpuSpec | None, str | None]:
    """The table row for an NVML device name, or None and why.

    Exact tokens, never substrings: "L40" never matches "L40S", "A10" never "A100" or "A10G", "H20" never
    "H200". A name must carry only tokens its family is known to use; the form factor (SXM, PCIe, NVL) and
    memory come from the name, then from memory_total_bytes where the name leaves a choice (A100 40 vs 80
    GB, GH200 96 vs 144 GB). A remaining ambiguity gives None, never a guess.
    """
    unknown = f"unknown GPU '{nvml_name}': not in tfbench's roofline table"
    toks = [t for t in _tokens(nvml_name or "") if t not in _NEUTRAL]
    tokset = set(toks)
    if "mig" in tokset:
        return None, f"GPU {nvml_name!r} is a MIG slice: the whole GPU's peaks do not apply to it"
    family = next(
        (f for f, (req, extra) in _FAMILIES.items() if req <= tokset and tokset - req <= extra),
        None,
    )
    if family is None:
        return None, unknown
    candidates = [g for g in GPUS.values() if g.family == family]
    form = _infer_form(family, tokset)
    if form == "conflict":
        return None, f"GPU {nvml_name!r} names two form factors"
    if form is not None:
        candidates = [g for g in candidates if g.form == form]
    named_gb = {int(t[:-2]) for t in tokset if re.fullmatch(r"\d+gb", t)} - _NOT_GPU_MEMORY.get(family, set())
    if named_gb:
        candidates = [g for g in candidates if g.memory_gb in named_gb]
    elif len({g.memory_gb for g in candidates}) > 1 and memory_total_bytes:
        nearest = min(candidates, key=lambda g: _memory_ratio_distance(g, memory_total_bytes))
        candidates = [g for g in candidates if g.memory_gb == nearest.memory_gb]
    if not candidates:
        return None, f"GPU {nvml_name!r}: this variant of {family.upper()} is not in tfbench's roofline table"
    if len(candidates) > 1:
        names = " or ".join(g.name for g in candidates)
        told = (
            "neither its name nor its memory size tells" if memory_total_bytes else "its name does not tell"
        )
        return None, f"GPU {nvml_name!r} is ambiguous ({names}): {told}"
    spec = candidates[0]
    if memory_total_bytes and _memory_ratio_distance(spec, memory_total_bytes) > math.log(_MEMORY_TOLERANCE):
        return None, (
            f"GPU {nvml_name!r} reports {memory_total_bytes / GB:.1f} GB, the table's {spec.name} has "
            f"{spec.memory_bytes / GB:.0f} GB: a variant tfbench's roofline table does not hold"
        )
    return spec, None


def match_gpu(nvml_name: str, memory_total_bytes: int | None = None) -> GpuSpec | None:
    """The table row for an NVML device name, or None (match_gpu_with_reason says why)."""
    return match_gpu_with_reason(nvml_name, memory_total_bytes)[0]


_DTYPE_ALIASES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


def normalize_dtype(dtype: Any) -> str | None:
    """'bfloat16', 'float16' or 'float32' for a dtype name or torch dtype; None for anything else."""
    text = str(dtype).lower().removeprefix("torch.")
    return _DTYPE_ALIASES.get(text)


def peak_flops(gpu: GpuSpec, dtype: Any) -> float | None:
    """Dense peak FLOP/s of gpu for matmuls in dtype (None: unknown dtype or no sourced figure)."""
    name = normalize_dtype(dtype)
    return {"bfloat16": gpu.bf16_flops, "float16": gpu.fp16_flops, "float32": gpu.fp32_flops}.get(name or "")


# ---------------------------------------------------------------------------------------------------
# Model arithmetic
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    parameters: int  # unique parameters (tied weights once)
    matmul_parameters: int  # parameters minus untied lookup tables (module docstring)
    lm_head_parameters: int  # the output projection's weight (and bias), tied or not
    weight_bytes_per_step: int  # bytes of the matmul parameters: read whole at every decode step
    embedding_row_bytes: int  # one row of every untied lookup table: read once per sequence per step
    dtype_bytes: int  # element size of the compute dtype (the KV cache's)
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    tied_embeddings: bool
    logits_last_token_only: bool = True  # the model takes logits_to_keep, so the prefill computes 1 row


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _same_tensor(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return a.data_ptr() != 0 and a.data_ptr() == b.data_ptr() and a.shape == b.shape
    except (AttributeError, RuntimeError):
        return False


def model_facts(model: Any) -> ModelFacts:
    """Facts of a loaded transformers PreTrainedModel (torch imported here, not at module import)."""
    import torch

    from bench.worker.quantize import logical_numel, stored_bytes

    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = list(model.parameters())  # unique: tied weights appear once
    parameters = sum(logical_numel(p) for p in params)
    # Quantized weights count as stored, read from the loaded model's tensors (torchao's int8 data
    # with its scales, bitsandbytes' packed bytes with theirs), not from a nominal bits-per-weight.
    total_bytes = sum(stored_bytes(p) for p in params)

    inp = model.get_input_embeddings()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inp_w = getattr(inp, "weight", None)
    out_w = getattr(out, "weight", None)
    tied = inp_w is not None and out_w is not None and _same_tensor(inp_w, out_w)

    tables: dict[int, Any] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            tables[id(module.weight)] = module.weight
    if inp_w is not None:
        tables[id(inp_w)] = inp_w
    lookup = [w for w in tables.values() if not (out_w is not None and _same_tensor(w, out_w))]
    lookup_params = sum(w.numel() for w in lookup)
    lookup_bytes = sum(stored_bytes(w) for w in lookup)
    row_bytes = sum(w.shape[-1] * w.element_size() for w in lookup)

    lm_head = 0
    if out_w is not None:
        lm_head = out_w.numel()
        bias = getattr(out, "bias", None)
        if bias is not None:
            lm_head += bias.numel()

    hidden = _config_int(text_config, "hidden_size", "n_embd", "d_model")
    heads = _config_int(text_config, "num_attention_heads", "n_head", "num_heads")
    layers = _config_int(text_config, "num_hidden_layers", "n_layer", "num_layers")
    if hidden is None or heads is None or layers is None:
        raise ValueError("the model config names no hidden size, attention heads or layer count")
    kv_heads = _config_int(text_config, "num_key_value_heads", "n_kv_heads", "multi_query_group_num") or heads
    head_dim = _config_int(text_config, "head_dim") or hidden // heads
    vocab = _config_int(text_config, "vocab_size") or (inp_w.shape[0] if inp_w is not None else 0)
    dtype = getattr(model, "dtype", None) or (params[0].dtype if params else torch.float32)
    supports_keep = getattr(model, "_supports_logits_to_keep", None)
    return ModelFacts(
        parameters=parameters,
        matmul_parameters=parameters - lookup_params,
        lm_head_parameters=lm_head,
        weight_bytes_per_step=total_bytes - lookup_bytes,
        embedding_row_bytes=row_bytes,
        dtype_bytes=dtype.itemsize,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=vocab,
        tied_embeddings=tied,
        logits_last_token_only=bool(supports_keep()) if callable(supports_keep) else False,
    )


def kv_bytes_per_token(facts: ModelFacts) -> int:
    """2 (K and V) * layers * KV heads * head_dim * dtype bytes: the cache one token adds per sequence."""
    return 2 * facts.num_hidden_layers * facts.num_key_value_heads * facts.head_dim * facts.dtype_bytes


def kv_cache_bytes(facts: ModelFacts, batch: int, tokens: int) -> int:
    """KV cache of batch sequences of tokens each (a cell: tokens = sequence_length + new tokens)."""
    return kv_bytes_per_token(facts) * batch * tokens


def attention_flops(facts: ModelFacts, batch: int, seq: int) -> int:
    """Prefill QK^T and AV FLOPs: 4 * layers * batch * query heads * head_dim * seq^2 (no causal halving)."""
    return 4 * facts.num_hidden_layers * batch * facts.num_attention_heads * facts.head_dim * seq * seq


def prefill_flops(facts: ModelFacts, batch: int, seq: int) -> int:
    """Matmul FLOPs of the prefill of batch prompts of seq tokens (conventions: module docstring)."""
    body = facts.matmul_parameters - facts.lm_head_parameters
    logits_tokens = 1 if facts.logits_last_token_only else seq
    return (
        2 * body * batch * seq
        + 2 * facts.lm_head_parameters * batch * logits_tokens
        + attention_flops(facts, batch, seq)
    )


def decode_kv_bytes_per_step(facts: ModelFacts, batch: int, seq: int, new_tokens: int) -> int:
    """KV bytes read per decode step, averaged over the new_tokens - 1 steps: context S + N/2 per sequence."""
    if new_tokens < 2:
        raise ValueError("fewer than 2 generated tokens: there is no decode step")
    # kv_bytes_per_token * batch * (seq + new_tokens / 2), kept exact: kv_bytes_per_token is even.
    return kv_bytes_per_token(facts) // 2 * batch * (2 * seq + new_tokens)


def decode_bytes_per_step(facts: ModelFacts, batch: int, seq: int, new_tokens: int) -> int:
    """Weight bytes + embedding rows + average KV bytes read per decode step."""
    return (
        facts.weight_bytes_per_step
        + batch * facts.embedding_row_bytes
        + decode_kv_bytes_per_step(facts, batch, seq, new_tokens)
    )


def roofline(
    facts: ModelFacts,
    gpu: GpuSpec | None,
    dtype: Any,
    batch: int,
    seq: int,
    new_tokens: int,
    ttft_s: float | None,
    tpot_s: float | None,
    *,
    gpu_reason: str | None = None,
    device: str | None = None,
    gpus: int = 1,
) -> dict[str, Any]:
    """The cell's roofline record. Byte and FLOP counts are always reported; MBU/MFU are None with a reason
    when the device is not a GPU, the GPU is not in the table (gpu_reason: match_gpu_with_reason's
    reason), its peak for dtype is unknown, or ttft/tpot is missing. Values above 1 are kept and flagged.
    gpus: the GPUs a tensor-parallel cell runs on, each one `gpu`; the peaks are theirs together, and
    the byte and FLOP counts are the whole model's (every rank streams its share at once).
    """
    reasons: list[str] = []
    decode_bytes: int | None = None
    try:
        decode_bytes = decode_bytes_per_step(facts, batch, seq, new_tokens)
    except ValueError as exc:
        reasons.append(f"no decode MBU: {exc}")
    pf = prefill_flops(facts, batch, seq)

    peak_f: float | None = None
    peak_bw: float | None = None
    if device is not None and device != "cuda":
        reasons.append(f"device is {device!r}: tfbench's roofline table holds GPU peaks only")
    elif gpu is None:
        reasons.append(gpu_reason or "no GPU spec: the GPU is not in tfbench's roofline table")
    else:
        peak_bw = gpu.memory_bandwidth_bytes_per_s * gpus
        peak_f = peak_flops(gpu, dtype)
        if peak_f is not None:
            peak_f *= gpus
        if peak_f is None:
            if normalize_dtype(dtype) is None:
                reasons.append(f"no prefill MFU: dtype {dtype!s} has no peak in the table")
            else:
                reasons.append(
                    f"no prefill MFU: no sourced {normalize_dtype(dtype)} peak FLOP/s for {gpu.name}"
                )

    mbu: float | None = None
    if peak_bw is not None and decode_bytes is not None:
        if tpot_s is None or tpot_s <= 0:
            reasons.append("no decode MBU: no tpot measured")
        else:
            mbu = decode_bytes / tpot_s / peak_bw
    mfu: float | None = None
    if peak_f is not None:
        if ttft_s is None or ttft_s <= 0:
            reasons.append("no prefill MFU: no ttft measured")
        else:
            mfu = pf / ttft_s / peak_f
    exceeds = any(v is not None and v > 1 for v in (mbu, mfu))
    return {
        "gpu": gpu.name if gpu is not None else None,
        "gpus": gpus,
        "dtype": normalize_dtype(dtype),
        "peak_flops": peak_f,
        "peak_bandwidth_bytes_per_s": peak_bw,
        "parameters": facts.parameters,
        "weight_bytes_per_step": facts.weight_bytes_per_step,
        "kv_cache_bytes": kv_cache_bytes(facts, batch, seq + new_tokens),
        "decode_bytes_per_step": decode_bytes,
        "prefill_flops": pf,
        "decode_mbu": mbu,
        "prefill_mfu": mfu,
        "exceeds_peak": exceeds,
        "reason": "; ".join(reasons) if reasons else None,
    }
