"""What a cell generated and what its profile says: digests, the degenerate check, agreement with
the reference cell, and the families of profiled operators."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from bench.results.outputs import (
    OUTPUT_TOKENS_KEPT,
    agreement,
    agreement_label,
    compare_tokens,
    degenerate,
    is_operator,
    op_family,
    op_summary,
    output_digest,
)
from bench.results.records import CellRecord


def test_digest_caps_the_ids_and_hashes_all_of_them():
    ids = list(range(100))
    out = output_digest(ids, "text")
    assert out["tokens"] == ids[:OUTPUT_TOKENS_KEPT] and out["n"] == 100 and out["text"] == "text"
    assert out["sha256"] == hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()
    assert output_digest(ids[:-1] + [7])["sha256"] != out["sha256"]  # a change past the kept ids shows


@pytest.mark.parametrize(
    ("ids", "said"),
    [
        ([5] * 20, "one token (5) repeated over 20 of 20 tokens"),
        ([1, 2, 3, 4, 5] + [8, 9] * 10, "a loop of period 2 over 20 of 25 tokens"),
        ([1, 2, 3, 4] * 6, "a loop of period 4 over 24 of 24 tokens"),
        ([9, 8, 7, 6, 5, 4, 3, 2] + [1] * 32, "one token (1) repeated over 32 of 40 tokens"),
        (list(range(20)), None),
        ([1, 2, 3, 4, 5, 6] * 4, None),  # period 6: a phrase, not a short loop
        ([3] * 5, None),  # too short to tell
        (list(range(10)) + [4] * 10, None),  # the loop covers half: not most of the output
    ],
)
def test_degenerate(ids, said):
    assert degenerate(ids) == said


def test_compare_tokens():
    assert compare_tokens([1, 2, 3, 4], [1, 2, 3, 4]) == {"match_rate": 1.0, "diverges_at": None}
    assert compare_tokens([1, 2, 3, 4], [1, 2, 9, 4]) == {"match_rate": 0.75, "diverges_at": 2}
    assert compare_tokens([1, 2, 3], [1, 2]) == {"match_rate": 1.0, "diverges_at": None}
    assert compare_tokens([], [1]) == {"match_rate": None, "diverges_at": None}


def _rec(index: int, ids: list[int] | None, attn: str = "eager", batch: int = 1, **axes: Any) -> CellRecord:
    cell = {
        "index": index,
        "cell_id": f"c{index}",
        "name": f"cell {index}",
        "model": "m/x",
        "dtype": "bfloat16",
        "device": "cuda",
        "attn_implementation": attn,
        "compile": None,
        "kernelize": False,
        "continuous_batching": False,
        "batch_size": batch,
        "sequence_length": 8,
        "num_tokens_to_generate": 4,
        **axes,
    }
    out = output_digest(ids) if ids is not None else None
    return CellRecord.model_validate({"cell_id": f"c{index}", "status": "ok", "cell": cell, "output": out})


def test_agreement_against_the_eager_reference_of_the_same_shape():
    records = [
        _rec(0, [1, 2, 3, 4]),
        _rec(1, [1, 2, 3, 4], "sdpa"),
        _rec(2, [1, 2, 7, 7], "sdpa", compile="default"),
        _rec(3, [1, 2, 3, 4], "eager", continuous_batching=True),
        _rec(4, [1, 2, 3, 4], "sdpa", batch=2),  # no eager cell at batch 2: no reference
        _rec(5, None, "sdpa"),  # a cell without an output (an earlier version's record)
    ]
    got = agreement(records)
    assert set(got) == {"c0", "c1", "c2", "c3"}
    assert got["c0"]["is_reference"] and got["c1"]["equal"] and got["c3"]["reference"] == "c0"
    assert got["c2"] == {
        "reference": "c0",
        "equal": False,
        "is_reference": False,
        "match_rate": 0.5,
        "diverges_at": 2,
    }
    labels = [agreement_label(got.get(c)) for c in ("c0", "c1", "c2", "c4")]
    assert labels == ["ref", "= ref", "diverges at 2", "-"]


def test_a_quantized_cell_is_compared_with_the_unquantized_reference():
    # the quantized eager cell comes first: still not the reference, and compared with the plain one
    records = [_rec(0, [1, 2, 9, 9], quantization="torchao-int8-weight-only"), _rec(1, [1, 2, 3, 4])]
    got = agreement(records)
    assert got["c1"]["is_reference"]
    assert got["c0"]["reference"] == "c1" and not got["c0"]["is_reference"]
    assert got["c0"]["diverges_at"] == 2
    # quantized cells alone have no reference: none is compared with itself
    assert agreement([_rec(0, [1, 2], quantization="bnb-4bit")]) == {}


def test_agreement_past_the_kept_ids():
    same = list(range(OUTPUT_TOKENS_KEPT))
    got = agreement([_rec(0, [*same, 1]), _rec(1, [*same, 2], "sdpa")])["c1"]
    assert not got["equal"] and got["diverges_at"] is None
    assert agreement_label(got) == f"diverges past {OUTPUT_TOKENS_KEPT}"


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("aten::mm", "matmul"),
        ("aten::addmm", "matmul"),
        ("aten::bmm", "matmul"),
        ("aten::linear", "matmul"),
        ("aten::matmul", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        ("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_tn", "matmul"),
        ("aten::_softmax", "attention"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 64>>", "attention"),
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
        ("aten::mul", "other"),
        ("aten::_cummax_helper", "other"),  # "mm" inside a word is no matmul
        ("aten::cat", "other"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "other"),
    ],
)
def test_op_family(name, family):
    assert op_family(name) == family


def test_operators_are_namespaced_names_not_python_frames():
    assert is_operator("aten::mm") and is_operator("cudnn::conv")
    assert not is_operator("multiprocessing/connection.py(395): _recv")
    assert not is_operator("<built-in method matmul of type object at 0x7f>")
    assert not is_operator("torch/nn/modules/module.py(1782): _call_impl")


def test_op_summary_top_and_shares():
    ops = [
        ("aten::mm", 10, 60.0),
        ("aten::_softmax", 2, 20.0),
        ("aten::mul", 5, 20.0),
        ("aten::empty", 1, 0.0),
    ]
    got = op_summary(ops, top=2)
    assert [o["name"] for o in got["top_ops"]] == ["aten::mm", "aten::_softmax"]
    assert got["top_ops"][0] == {
        "name": "aten::mm",
        "calls": 10,
        "self_time_us": 60.0,
        "share": 0.6,
        "family": "matmul",
    }
    assert got["shares"] == {"attention": 0.2, "matmul": 0.6, "other": 0.2}
    assert got["total_self_time_us"] == 100.0
    assert op_summary([])["shares"] == {"attention": None, "matmul": None, "other": None}
