"""What a quantized model holds, counted from its tensors: the bytes as stored, the logical elements."""

from __future__ import annotations

import pytest
import torch

from bench.worker.quantize import is_quantized, logical_numel, quantization_config, stored_bytes


def test_plain_tensors_count_numel_times_element_size():
    weight = torch.nn.Parameter(torch.zeros(8, 4, dtype=torch.bfloat16))
    assert stored_bytes(weight) == 8 * 4 * 2
    assert logical_numel(weight) == 32
    assert not is_quantized(weight)


def test_torchao_int8_weights_count_their_int8_data_and_scales():
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    linear = torch.nn.Linear(64, 32, bias=False)
    # set_inductor_config=False: the default changes torch._inductor's global config for the
    # whole test process, which later compiled tests would inherit.
    quantize_(linear, Int8WeightOnlyConfig(set_inductor_config=False))
    weight = linear.weight
    assert is_quantized(weight)
    assert logical_numel(weight) == 64 * 32
    # int8 data, plus one float32 scale and one int8 zero point per output row
    assert stored_bytes(weight) == 64 * 32 + 32 * 4 + 32
    assert weight.numel() * weight.element_size() == 64 * 32 * 4  # what a naive count would read


def test_bitsandbytes_4bit_counts_its_packed_bytes_its_scales_and_its_original_shape():
    class State:
        shape = torch.Size([32, 64])
        absmax = torch.zeros(32, dtype=torch.float32)

    packed = torch.nn.Parameter(torch.zeros(32 * 64 // 2, 1, dtype=torch.uint8), requires_grad=False)
    packed.quant_state = State()
    assert logical_numel(packed) == 32 * 64
    assert stored_bytes(packed) == 32 * 64 // 2 + 32 * 4
    assert is_quantized(packed)


def test_configs():
    assert quantization_config("none", torch.float32) is None
    with pytest.raises(ValueError):
        quantization_config("int3", torch.float32)
    pytest.importorskip("torchao")
    config = quantization_config("torchao-int8-weight-only", torch.float32)
    assert type(config.quant_type).__name__ == "Int8WeightOnlyConfig"
