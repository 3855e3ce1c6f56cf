"""int8 quantization of the decoder's linear layers: the arithmetic is the scheme's (exact
integer sums, one scale per weight row and per token), a token's output does not depend on
the batch, and only the decoder's layers are replaced."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from torch import nn

from tests.models.kernel import require_kernel
from vlmserve.models import native, quantize
from vlmserve.models.decoder import fuse_projections
from vlmserve.models.loader import load_model
from vlmserve.models.quantize import (
    Int8Linear,
    check_quantization,
    int8_available,
    int8_sums,
    quantize_linears,
    quantize_rows,
)
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams, StructuredOutputsParams

needs_int8 = pytest.mark.skipif(
    not int8_available(), reason="no exact oneDNN int8 GEMM here (torch build or CPU without VNNI)"
)


def _linear(inputs: int, outputs: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(inputs, outputs, bias=bias).to(torch.bfloat16)


def _reference(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The scheme written out: int8 weights per row and int8 tokens (quantized in float32,
    as the layer does: bf16 weights often fall on a tie that float64 would round the other
    way), their sums in float64, scaled."""
    weight = linear.weight.detach().float()
    w_scale = weight.abs().amax(dim=1) / 127
    w_int = (weight / w_scale[:, None]).round().double()
    x_scale = x.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    x_int = (x.float() / x_scale).round().double()
    out = (x_int @ w_int.T) * x_scale.double() * w_scale.double()
    return out if linear.bias is None else out + linear.bias.double()


@pytest.fixture(params=["native", "torch"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Int8Linear's two ways: the quantize and finish steps in our C (where it builds), or
    in torch operations."""
    if request.param == "native":
        require_kernel()
    else:
        monkeypatch.setattr(native, "load", lambda: None)
    return str(request.param)


@needs_int8
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_computes_the_scheme(bias: bool, path: str) -> None:
    linear = _linear(96, 80, bias).float()
    x = torch.randn(11, 96)
    out = Int8Linear(linear)(x)
    assert out.dtype == torch.float32 and out.shape == (11, 80)
    # Only float32 scales and sums (the integer ones are exact) separate the two.
    torch.testing.assert_close(out.double(), _reference(linear, x), rtol=1e-5, atol=1e-5)


@needs_int8
def test_int8_linear_stays_near_the_bf16_one(path: str) -> None:
    linear = _linear(256, 128, True)
    x = torch.randn(16, 256).to(torch.bfloat16)
    out = Int8Linear(linear)(x)
    assert out.dtype == torch.bfloat16 and out.shape == (16, 128)
    exact = linear(x).float()
    # Random weights: ~1 % relative error; a wrong scale or sign would be far off.
    assert (out.float() - exact).norm() / exact.norm() < 0.03


@needs_int8
def test_a_tokens_output_does_not_depend_on_its_batch(path: str) -> None:
    layer = Int8Linear(_linear(64, 48, True))
    rows = torch.randn(37, 64).to(torch.bfloat16)
    rows[5] *= 1000  # a loud row: with one scale per batch it would flatten the others
    together = layer(rows)
    for i in (0, 5, 36):
        assert torch.equal(layer(rows[i : i + 1])[0], together[i])
    assert torch.equal(layer(rows[:9]), together[:9])  # 9 rows padded to a bucket of 9


@needs_int8
def test_zero_rows_give_the_bias(path: str) -> None:
    linear = _linear(32, 16, True)
    out = Int8Linear(linear)(torch.zeros(3, 32, dtype=torch.bfloat16))
    assert torch.equal(out, linear.bias.detach().expand(3, 16))


def test_the_c_quantize_gives_torchs_bits() -> None:
    kernels = require_kernel()
    quantize = kernels.int8_rows[torch.bfloat16][0]
    x = torch.randn(9, 200).to(torch.bfloat16)
    x[3] = 0  # a row of zeros
    x[4, 7] = 0.5 * x[4].abs().max()  # ties between two int8 values are frequent in bf16
    quantized = torch.empty(9, 200, dtype=torch.int8)
    scales = torch.empty(9)
    quantize(x.data_ptr(), 9, 200, quantized.data_ptr(), scales.data_ptr())
    expected, expected_scales = quantize_rows(x)
    assert torch.equal(quantized, expected) and torch.equal(scales, expected_scales[:, 0])


def test_quantize_rows_keeps_the_sign_and_the_range() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    quantized, scales = quantize_rows(x)
    assert quantized.dtype == torch.int8
    assert quantized[0].tolist() == [64, -127, 32] and quantized[1].tolist() == [0, 0, 0]
    assert scales[0].item() == pytest.approx(2 / 127)


@needs_int8
def test_only_the_decoder_layers_are_quantized(tiny_qwen2_vl: Path) -> None:
    model, _ = load_model(str(tiny_qwen2_vl), torch.bfloat16, torch.device("cpu"))
    fuse_projections(model)
    layers = len(model.model.layers)
    assert quantize_linears(model, "none") == 0
    assert quantize_linears(model, "int8") == 4 * layers  # qkv, o, gate_up, down
    for name, module in model.named_modules():
        quantized = isinstance(module, Int8Linear)
        assert quantized == (name.startswith("model.layers.") and "proj" in name), name
    assert type(model.lm_head) is nn.Linear


def test_unknown_quantizations_and_other_devices_are_refused() -> None:
    with pytest.raises(ValueError, match="one of none, int8, got 'int4'"):
        check_quantization("int4", torch.device("cpu"))
    with pytest.raises(ValueError, match="CPU only"):
        check_quantization("int8", torch.device("cuda"))
    check_quantization("none", torch.device("cuda"))


def test_int8_is_refused_where_its_sums_are_not_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPUs without VNNI oneDNN's int8 sums saturate: refused, saying what it needs."""
    monkeypatch.setattr(quantize, "int8_available", lambda: False)
    with pytest.raises(ValueError, match=r"exact int32 sums .* AVX-512 VNNI, AVX-VNNI or AMX"):
        check_quantization("int8", torch.device("cpu"))
    check_quantization("none", torch.device("cpu"))


def test_the_int8_probe_checks_the_sums_of_this_machine() -> None:
    """The probe answers what the GEMM gives here: where it says yes, a layer's sums are
    exact (the scheme tests above then run); where it says no, they are not."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(-127, 128, (16, 256), generator=generator, dtype=torch.int8)
    w = torch.randint(-127, 128, (32, 256), generator=generator, dtype=torch.int8)
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_prepack")):
        assert not int8_available()
        return
    sums = int8_sums(
        x, torch.ops.onednn.qlinear_prepack(w, None), torch.ones(32), torch.zeros(32).long()
    )
    assert int8_available() == torch.equal(sums, x.float() @ w.float().T)


SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["safe", "unsafe"]}, "why": {"type": "string"}},
    "required": ["label", "why"],
    "additionalProperties": False,
}


@needs_int8
def test_an_int8_engine_answers_within_the_schema(tiny_qwen2_vl: Path) -> None:
    llm = LLM(str(tiny_qwen2_vl), dtype="bfloat16", quantization="int8")
    try:
        assert any(isinstance(m, Int8Linear) for m in llm.engine.model.modules())
        params = SamplingParams(
            temperature=0.0,
            max_tokens=40,
            structured_outputs=StructuredOutputsParams(json=SCHEMA),
        )
        out = llm.generate(["<|im_start|>user\nIs it safe?<|im_end|>\n"] * 3, params)
        for answer in out:
            jsonschema.validate(json.loads(answer.outputs[0].text), SCHEMA)
        # Greedy and batch-independent: the same prompt gives the same tokens every time.
        assert len({tuple(answer.outputs[0].token_ids) for answer in out}) == 1
    finally:
        llm.close()
