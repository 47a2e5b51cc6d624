"""Roofline arithmetic against hand-computed figures, GPU-name matching, and facts of tiny offline models."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.worker.roofline import (
    GPUS,
    ModelFacts,
    attention_flops,
    decode_bytes_per_step,
    decode_kv_bytes_per_step,
    kv_bytes_per_token,
    kv_cache_bytes,
    match_gpu,
    match_gpu_with_reason,
    model_facts,
    peak_flops,
    prefill_flops,
    roofline,
)

MIB = 2**20

# Llama-3-8B in bf16: 32 layers, 32 query heads, 8 KV heads, head_dim 128, hidden 4096, vocab 128256,
# untied embeddings. 8,030,261,248 parameters; the token table and the lm_head are 128256 * 4096 =
# 525,336,576 each. Matmul parameters = 8,030,261,248 - 525,336,576 = 7,504,924,672 (the lm_head stays).
LLAMA3_8B = ModelFacts(
    parameters=8_030_261_248,
    matmul_parameters=7_504_924_672,
    lm_head_parameters=525_336_576,
    weight_bytes_per_step=15_009_849_344,  # 7,504,924,672 * 2 bytes
    embedding_row_bytes=8_192,  # one row of the token table: 4096 * 2 bytes
    dtype_bytes=2,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    hidden_size=4096,
    vocab_size=128_256,
    tied_embeddings=False,
)


# ------------------------------------------------------------------------------------------------
# Arithmetic
# ------------------------------------------------------------------------------------------------


def test_kv_cache_bytes_llama3_8b():
    # 2 (K, V) * 32 layers * 8 KV heads * 128 head_dim * 2 bytes = 131,072 bytes per token per sequence.
    assert kv_bytes_per_token(LLAMA3_8B) == 131_072
    # A cell of batch 4, 2048 prompt + 128 new tokens holds 4 * 2176 * 131,072 = 1,140,850,688 bytes.
    assert kv_cache_bytes(LLAMA3_8B, batch=4, tokens=2048 + 128) == 1_140_850_688


def test_decode_bytes_per_step_llama3_8b():
    # Decode steps j = 1..127 attend over 2048 + j positions: on average 2048 + 128/2 = 2112 per sequence.
    # KV read per step = 4 * 2112 * 131,072 = 1,107,296,256 bytes.
    assert decode_kv_bytes_per_step(LLAMA3_8B, batch=4, seq=2048, new_tokens=128) == 1_107_296_256
    # + weights 15,009,849,344 + 4 token-table rows of 8,192 bytes (32,768) = 16,117,178,368 bytes.
    assert decode_bytes_per_step(LLAMA3_8B, batch=4, seq=2048, new_tokens=128) == 16_117_178_368
    # An odd number of new tokens stays exact: steps 1..128 average 2048 + 129/2 = 2112.5 positions:
    # 4 * 2112.5 * 131,072 = 1,107,558,400.
    assert decode_kv_bytes_per_step(LLAMA3_8B, batch=4, seq=2048, new_tokens=129) == 1_107_558_400
    with pytest.raises(ValueError, match="no decode step"):
        decode_bytes_per_step(LLAMA3_8B, batch=1, seq=16, new_tokens=1)


def test_prefill_flops_llama3_8b():
    # Attention (no causal halving): 4 * 32 layers * 1 * 32 heads * 128 * 2048^2 = 2,199,023,255,552.
    assert attention_flops(LLAMA3_8B, batch=1, seq=2048) == 2_199_023_255_552
    # Body: 2 * (7,504,924,672 - 525,336,576) * 2048 = 2 * 6,979,588,096 * 2048 = 28,588,392,841,216.
    # lm_head for the last prompt token only: 2 * 525,336,576 = 1,050,673,152.
    # Total: 28,588,392,841,216 + 1,050,673,152 + 2,199,023,255,552 = 30,788,466,769,920.
    assert prefill_flops(LLAMA3_8B, batch=1, seq=2048) == 30_788_466_769_920
    # Without logits_to_keep the lm_head runs for all 2048 tokens: + 2 * 525,336,576 * 2047 more.
    all_logits = ModelFacts(**{**LLAMA3_8B.__dict__, "logits_last_token_only": False})
    assert prefill_flops(all_logits, batch=1, seq=2048) == 30_788_466_769_920 + 2 * 525_336_576 * 2047
    # Linear in batch.
    assert prefill_flops(LLAMA3_8B, batch=3, seq=2048) == 3 * 30_788_466_769_920


def test_roofline_llama3_8b_on_h100_sxm():
    h100 = match_gpu("NVIDIA H100 80GB HBM3")
    assert h100 is not None and h100.key == "h100-sxm"
    # Decode: 16,117,178,368 bytes per step / 0.010 s = 1.6117e12 B/s; / 3.35e12 B/s = 0.481110.
    r = roofline(LLAMA3_8B, h100, "bfloat16", batch=4, seq=2048, new_tokens=128, ttft_s=0.2, tpot_s=0.010)
    assert r["decode_mbu"] == pytest.approx(0.4811098, rel=1e-6)
    assert r["decode_bytes_per_step"] == 16_117_178_368
    assert r["kv_cache_bytes"] == 1_140_850_688
    assert r["weight_bytes_per_step"] == 15_009_849_344
    assert r["parameters"] == 8_030_261_248
    assert r["peak_bandwidth_bytes_per_s"] == 3.35e12
    # Prefill batch 1, 2048 tokens, ttft 0.05 s: 30,788,466,769,920 / 0.05 = 6.1577e14 FLOP/s;
    # / 989.5e12 (1,979 TFLOPS with sparsity, halved) = 0.622304.
    r = roofline(LLAMA3_8B, h100, "bfloat16", batch=1, seq=2048, new_tokens=128, ttft_s=0.05, tpot_s=0.01)
    assert r["peak_flops"] == 989.5e12
    assert r["prefill_flops"] == 30_788_466_769_920
    assert r["prefill_mfu"] == pytest.approx(0.6223035, rel=1e-6)
    assert r["gpu"] == "H100 SXM" and r["dtype"] == "bfloat16"
    assert r["exceeds_peak"] is False and r["reason"] is None


def test_roofline_reports_values_above_one_unclamped_and_flagged():
    h100 = GPUS["h100-sxm"]
    # 16,117,178,368 bytes in 1 ms = 1.6117e13 B/s: 4.811 times the H100's 3.35e12.
    r = roofline(LLAMA3_8B, h100, "bf16", batch=4, seq=2048, new_tokens=128, ttft_s=10.0, tpot_s=0.001)
    assert r["decode_mbu"] == pytest.approx(4.811098, rel=1e-6)
    assert r["exceeds_peak"] is True


def test_roofline_cpu_gives_null_ratios_with_a_reason_but_keeps_counts():
    r = roofline(LLAMA3_8B, None, "float32", 1, 16, 6, ttft_s=0.1, tpot_s=0.01, device="cpu")
    assert r["decode_mbu"] is None and r["prefill_mfu"] is None
    assert "cpu" in r["reason"]
    assert r["gpu"] is None and r["peak_flops"] is None and r["peak_bandwidth_bytes_per_s"] is None
    assert r["kv_cache_bytes"] == kv_cache_bytes(LLAMA3_8B, 1, 22)
    assert r["prefill_flops"] == prefill_flops(LLAMA3_8B, 1, 16)
    assert r["decode_bytes_per_step"] == decode_bytes_per_step(LLAMA3_8B, 1, 16, 6)
    assert r["exceeds_peak"] is False


def test_roofline_unknown_gpu_carries_the_match_reason():
    spec, why = match_gpu_with_reason("Tesla T4", 15360 * MIB)
    r = roofline(LLAMA3_8B, spec, "float16", 1, 16, 6, ttft_s=0.1, tpot_s=0.01, gpu_reason=why)
    assert r["decode_mbu"] is None and r["prefill_mfu"] is None
    assert r["reason"] == "unknown GPU 'Tesla T4': not in tfbench's roofline table"


def test_roofline_missing_timings_and_single_token():
    h100 = GPUS["h100-sxm"]
    r = roofline(LLAMA3_8B, h100, "bfloat16", 1, 16, 6, ttft_s=None, tpot_s=None)
    assert r["decode_mbu"] is None and r["prefill_mfu"] is None
    assert "no tpot" in r["reason"] and "no ttft" in r["reason"]
    r = roofline(LLAMA3_8B, h100, "bfloat16", 1, 16, 1, ttft_s=0.1, tpot_s=None)
    assert r["decode_bytes_per_step"] is None and r["decode_mbu"] is None
    assert r["prefill_mfu"] is not None and "no decode step" in r["reason"]


def test_roofline_gpu_without_sourced_flops_gives_mbu_only():
    a10g = match_gpu("NVIDIA A10G", 23028 * MIB)
    r = roofline(LLAMA3_8B, a10g, "bfloat16", 1, 16, 6, ttft_s=0.1, tpot_s=0.05)
    assert r["decode_mbu"] is not None and r["prefill_mfu"] is None
    assert "A10G" in r["reason"]
    r = roofline(LLAMA3_8B, GPUS["h100-sxm"], "int8", 1, 16, 6, ttft_s=0.1, tpot_s=0.05)
    assert r["prefill_mfu"] is None and "int8" in r["reason"]


def test_peak_flops_by_dtype_and_dense_figures():
    h100 = GPUS["h100-sxm"]
    assert peak_flops(h100, "bfloat16") == 989.5e12  # not the 1,979 TFLOPS sparsity figure
    assert peak_flops(h100, "float16") == 989.5e12
    assert peak_flops(h100, "float32") == 67e12
    assert peak_flops(h100, "torch.bfloat16") == 989.5e12
    assert peak_flops(h100, "auto") is None
    assert GPUS["a100-sxm-80gb"].bf16_flops == 312e12
    assert GPUS["l4"].bf16_flops == 121e12
    assert GPUS["b200"].bf16_flops == 2250e12
    for g in GPUS.values():
        assert g.memory_bandwidth_bytes_per_s > 0 and g.memory_bytes > 0 and g.source
        if g.bf16_flops is not None:
            assert g.fp32_flops is not None and g.bf16_flops > g.fp32_flops


# ------------------------------------------------------------------------------------------------
# GPU names
# ------------------------------------------------------------------------------------------------

# Real NVML names with the memory NVML reports (MiB where seen in the wild, else nominal GiB).
NVML_NAMES = [
    ("NVIDIA H100 80GB HBM3", 81559 * MIB, "h100-sxm"),
    ("NVIDIA H100 PCIe", 81559 * MIB, "h100-pcie"),
    ("NVIDIA H100 NVL", 95830 * MIB, "h100-nvl"),
    ("NVIDIA H200", 143771 * MIB, "h200-sxm"),
    ("NVIDIA H200 NVL", 143771 * MIB, "h200-nvl"),
    ("NVIDIA A100-SXM4-80GB", 81920 * MIB, "a100-sxm-80gb"),
    ("NVIDIA A100-SXM4-40GB", 40960 * MIB, "a100-sxm-40gb"),
    ("NVIDIA A100-PCIE-40GB", 40960 * MIB, "a100-pcie-40gb"),
    ("NVIDIA A100 80GB PCIe", 81920 * MIB, "a100-pcie-80gb"),
    ("NVIDIA A10G", 23028 * MIB, "a10g"),
    ("NVIDIA A10", 23028 * MIB, "a10"),
    ("NVIDIA L4", 23034 * MIB, "l4"),
    ("NVIDIA L40S", 46068 * MIB, "l40s"),
    ("NVIDIA L40", 46068 * MIB, "l40"),
    ("NVIDIA GeForce RTX 4090", 24564 * MIB, "rtx-4090"),
    ("NVIDIA RTX 6000 Ada Generation", 48632 * MIB, "rtx-6000-ada"),
    ("NVIDIA B200", 183359 * MIB, "b200"),
    ("NVIDIA GH200 480GB", 97871 * MIB, "gh200-96gb"),
    ("NVIDIA GH200 144G HBM3e", 153_008_209_920, "gh200-144gb"),
]


@pytest.mark.parametrize(("name", "memory", "key"), NVML_NAMES)
def test_match_every_listed_nvml_name(name, memory, key):
    spec, why = match_gpu_with_reason(name, memory)
    assert why is None and spec is not None and spec.key == key
    if key not in ("gh200-96gb",):  # the GH200's "480GB" is its CPU memory: the name alone does not tell
        assert match_gpu(name) is spec


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("nvidia a100-sxm4-80gb", "a100-sxm-80gb"),
        ("NVIDIA_A100_PCIE_40GB", "a100-pcie-40gb"),
        ("  NVIDIA   H100   80 GB  HBM3 ", "h100-sxm"),
        ("NVIDIA-L40S", "l40s"),
        ("Nvidia Geforce RTX-4090", "rtx-4090"),
    ],
)
def test_match_is_robust_to_case_spaces_and_dashes(name, key):
    assert match_gpu(name).key == key


@pytest.mark.parametrize(
    ("name", "key"),
    [("NVIDIA L40", "l40"), ("NVIDIA L40S", "l40s"), ("NVIDIA L4", "l4")],
)
def test_l40_l40s_l4_never_shadow_each_other(name, key):
    assert match_gpu(name).key == key


@pytest.mark.parametrize(
    ("name", "key"),
    [("NVIDIA A10", "a10"), ("NVIDIA A10G", "a10g"), ("NVIDIA A100-SXM4-40GB", "a100-sxm-40gb")],
)
def test_a10_a10g_a100_never_shadow_each_other(name, key):
    assert match_gpu(name).key == key


def test_a100_size_from_memory_where_the_name_does_not_tell():
    assert match_gpu("NVIDIA A100-SXM4", 40960 * MIB).key == "a100-sxm-40gb"
    assert match_gpu("NVIDIA A100-SXM4", 81920 * MIB).key == "a100-sxm-80gb"
    assert match_gpu("NVIDIA A100 PCIe", 81920 * MIB).key == "a100-pcie-80gb"
    spec, why = match_gpu_with_reason("NVIDIA A100-SXM4")
    assert spec is None and "ambiguous" in why
    # The name says 40 GB, NVML says 80: a part the table does not hold, not a guess.
    spec, why = match_gpu_with_reason("NVIDIA A100-SXM4-40GB", 81920 * MIB)
    assert spec is None and "does not hold" in why


def test_gh200_size_from_memory():
    assert match_gpu("NVIDIA GH200 480GB", 153_008_209_920).key == "gh200-144gb"
    spec, why = match_gpu_with_reason("NVIDIA GH200 480GB")
    assert spec is None and "ambiguous" in why


@pytest.mark.parametrize(
    "name",
    [
        "Tesla T4",
        "NVIDIA T4",
        "NVIDIA H20",  # not an H200
        "NVIDIA H800",
        "NVIDIA A800-SXM4-80GB",
        "NVIDIA GeForce RTX 4090 D",  # a cut-down 4090
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "Quadro RTX 6000",  # Turing, not the Ada card
        "NVIDIA RTX A6000",
        "NVIDIA L40G",
        "NVIDIA A40",
        "AMD Instinct MI300X",
        "",
    ],
)
def test_unknown_names_give_none_with_the_reason(name):
    spec, why = match_gpu_with_reason(name)
    assert spec is None
    assert why == f"unknown GPU '{name}': not in tfbench's roofline table"
    assert match_gpu(name) is None


def test_ambiguous_mig_and_unlisted_variants_give_none():
    spec, why = match_gpu_with_reason("NVIDIA H100")  # SXM, PCIe or NVL
    assert spec is None and "ambiguous" in why
    assert match_gpu("NVIDIA H100", 95830 * MIB).key == "h100-nvl"  # only the NVL has 94 GB
    spec, why = match_gpu_with_reason("NVIDIA A100-SXM4-40GB MIG 1g.5gb", 4864 * MIB)
    assert spec is None and "MIG" in why
    spec, why = match_gpu_with_reason("NVIDIA H100 SXM5 94GB")  # a real SKU the table does not hold
    assert spec is None and "not in tfbench's roofline table" in why


# ------------------------------------------------------------------------------------------------
# Facts of real (tiny, random, offline) models
# ------------------------------------------------------------------------------------------------


def _tiny_llama(**overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        **overrides,
    )
    return LlamaForCausalLM(config)


def test_model_facts_tiny_llama_untied():
    model = _tiny_llama(tie_word_embeddings=False)
    facts = model_facts(model)
    # Per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12,288; gate/up/down 3 * 64*128 = 24,576;
    # 2 RMSNorms 128: 36,992. Two layers 73,984; final norm 64; token table and lm_head 64,000 each.
    # Total 64,000 + 73,984 + 64 + 64,000 = 202,048.
    assert facts.parameters == 202_048 == sum(p.numel() for p in model.parameters())
    assert facts.tied_embeddings is False
    assert facts.lm_head_parameters == 64_000
    assert facts.matmul_parameters == 202_048 - 64_000  # the token table is only indexed
    assert facts.weight_bytes_per_step == (202_048 - 64_000) * 4  # float32
    assert facts.embedding_row_bytes == 64 * 4
    assert facts.dtype_bytes == 4
    assert (facts.num_hidden_layers, facts.num_attention_heads, facts.num_key_value_heads) == (2, 4, 2)
    assert (facts.head_dim, facts.hidden_size, facts.vocab_size) == (16, 64, 1000)
    assert facts.logits_last_token_only is True
    # 2 * 2 layers * 2 KV heads * 16 * 4 bytes = 512 bytes per token.
    assert kv_bytes_per_token(facts) == 512


def test_model_facts_tiny_llama_tied_and_bf16():
    import torch

    model = _tiny_llama(tie_word_embeddings=True).to(torch.bfloat16)
    facts = model_facts(model)
    assert facts.parameters == 138_048 == sum(p.numel() for p in model.parameters())
    assert facts.tied_embeddings is True
    # The tied table is the lm_head's weight: read whole every step, a matmul parameter, no row term.
    assert facts.matmul_parameters == 138_048
    assert facts.lm_head_parameters == 64_000
    assert facts.weight_bytes_per_step == 138_048 * 2
    assert facts.embedding_row_bytes == 0
    assert facts.dtype_bytes == 2
    assert kv_bytes_per_token(facts) == 256


def test_model_facts_tiny_gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=128))
    facts = model_facts(model)
    # wte 1000*64 = 64,000 (tied to the lm_head); wpe 128*64 = 8,192. Per block: ln_1 128,
    # c_attn 64*192 + 192 = 12,480, attn c_proj 64*64 + 64 = 4,160, ln_2 128, c_fc 64*256 + 256 = 16,640,
    # mlp c_proj 256*64 + 64 = 16,448: 49,984. Two blocks 99,968; ln_f 128.
    # Total 64,000 + 8,192 + 99,968 + 128 = 172,288.
    assert facts.parameters == 172_288 == sum(p.numel() for p in model.parameters())
    assert facts.tied_embeddings is True
    assert facts.matmul_parameters == 172_288 - 8_192  # only the position table is lookup-only
    assert facts.weight_bytes_per_step == (172_288 - 8_192) * 4
    assert facts.embedding_row_bytes == 64 * 4  # one wpe row per sequence per step
    assert (facts.num_hidden_layers, facts.num_attention_heads, facts.num_key_value_heads) == (2, 4, 4)
    assert (facts.head_dim, facts.hidden_size) == (16, 64)
    assert kv_bytes_per_token(facts) == 2 * 2 * 4 * 16 * 4


def test_module_does_not_import_torch():
    code = "import sys, bench.worker.roofline; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
