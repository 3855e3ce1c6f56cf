"""Float32 linears whose rows keep their bits (models/rows.py): a row's bits do not depend
on how many rows share the call, and the layer keeps its parameters' names."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from tests.models.kernel import require_kernel
from vlmserve.models import native
from vlmserve.models import rows as rows_module
from vlmserve.models.rows import InvariantLinear, RowAlignedLinear, align_linear_rows, rows_vary


def test_a_rows_bits_do_not_depend_on_the_row_count() -> None:
    """On AVX2 CPUs torch's float32 GEMM gives 1-3 rows other sums than 4 or more (an AMD
    EPYC, measured): without the padding this fails there."""
    torch.manual_seed(0)
    for features in [(128, 384), (768, 2304), (64, 50)]:
        linear = nn.Linear(*features)
        aligned = RowAlignedLinear(linear)
        x = torch.randn(40, features[0])
        with torch.inference_mode():
            full = aligned(x)
            assert torch.equal(full, linear(x))  # 40 rows: nothing to pad
            for rows in [*range(1, 14), 21, 33]:
                assert torch.equal(aligned(x[:rows]), full[:rows]), (features, rows)
            assert torch.equal(aligned(x[:6].view(2, 3, -1)), full[:6].view(2, 3, -1))


def _invariant() -> None:
    kernels = require_kernel()
    if not kernels.has_linear:
        pytest.skip("linear_avx2.c needs AVX2 and FMA")


@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_gives_a_row_the_same_bits_wherever_it_stands(bias: bool) -> None:
    """InvariantLinear (linear_avx2.c): right to float32 rounding, and a row's bits the same
    for any row count, any place in the call, any shape of input and any thread count."""
    _invariant()
    torch.manual_seed(0)
    for features in [(128, 384), (768, 2304), (64, 50), (7, 3)]:  # 50, 3: a partial panel
        linear = nn.Linear(*features, bias=bias)
        kernel = InvariantLinear(linear)
        x = torch.randn(70, features[0])  # past one chunk of 64 rows
        with torch.inference_mode():
            full = kernel(x)
            assert torch.allclose(full, linear(x), atol=1e-5, rtol=1e-5)
            for rows in [*range(1, 14), 21, 33, 64, 65]:
                assert torch.equal(kernel(x[:rows]), full[:rows]), (features, rows)
            assert torch.equal(kernel(x[5:9]), full[5:9])
            assert torch.equal(kernel(x[:6].view(2, 3, -1)), full[:6].view(2, 3, -1))
            assert torch.equal(kernel(x.t().contiguous().t()), full)  # not contiguous
            threads = torch.get_num_threads()
            try:
                torch.set_num_threads(3)
                assert torch.equal(kernel(x), full)  # split across threads: 70*768*2304 MACs
            finally:
                torch.set_num_threads(threads)


def test_a_weight_that_bf16_holds_exactly_is_packed_in_bf16_for_the_same_bits() -> None:
    """A bf16 checkpoint loaded in float32 streams half the bytes, with the same products:
    the bf16 panels give exactly what the same values packed in float32 give."""
    _invariant()
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    assert InvariantLinear(linear).weight.dtype == torch.float32  # random float32: not exact
    linear.weight.data = linear.weight.data.bfloat16().float()
    kernel = InvariantLinear(linear)
    assert kernel.weight.dtype == torch.bfloat16 and kernel.weight.shape == (3, 96, 16)
    x = torch.randn(9, 96)
    wide = native.invariant_linear(x, kernel.weight.float(), kernel.bias, 40)
    assert torch.equal(kernel(x), wide)
    assert torch.allclose(wide, linear(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match=r"contiguous float32 input, got torch\.float64"):
        native.invariant_linear(x.double(), kernel.weight, kernel.bias, 40)  # not misread
    with pytest.raises(TypeError, match=r"got torch\.float32 \(not contiguous\)"):
        native.invariant_linear(x.t().contiguous().t(), kernel.weight, kernel.bias, 40)


def test_aligned_models_give_batch_invariant_rows_and_keep_their_weights(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever the probe decides here, a model's rows do not vary afterwards: our kernel
    where the GEMM varies (the EPYC), padding for a tied weight, nothing where it does not
    vary."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 128), nn.Linear(128, 10), nn.Linear(128, 384))
    model.append(nn.Linear(8, 4).bfloat16())
    model[1].weight = model[0].weight  # tied, as an LM head to its embedding
    model[2].weight.data = model[2].weight.data.bfloat16().float()  # a bf16 checkpoint's
    names = list(model.state_dict())
    varied = [rows_vary(model[1]), rows_vary(model[2])]
    kernels = native.load()
    own = kernels is not None and kernels.has_linear
    with caplog.at_level(logging.INFO, logger="vlmserve.models.rows"):
        assert align_linear_rows(model) == sum(varied)
    on_kernel = int(own and varied[1])
    if any(varied):  # said: how many on the kernel, how many of those in bf16, padded
        assert (
            f"{on_kernel} on our kernel ({on_kernel} of them in bf16 panels, exact), "
            f"{sum(varied) - on_kernel} padded to 4 rows"
        ) in caplog.text
    assert isinstance(model[1], RowAlignedLinear) == varied[0]  # tied: never packed
    assert isinstance(model[2], InvariantLinear if own else RowAlignedLinear) == varied[1]
    assert type(model[3]) is nn.Linear  # bf16: not float32's GEMM
    assert model[1].weight is model[0].weight and list(model.state_dict()) == names
    x = torch.randn(24, 128)
    with torch.inference_mode():
        for layer in (model[1], model[2]):
            full = layer(x)
            assert all(torch.equal(layer(x[:rows]), full[:rows]) for rows in range(1, 14))


def test_without_the_kernel_varying_rows_are_padded_and_that_is_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(native, "load", lambda: None)  # no compiler, or switched off
    monkeypatch.setattr(rows_module, "rows_vary", lambda linear: True)
    model = nn.Sequential(nn.Linear(16, 8))
    with caplog.at_level(logging.INFO, logger="vlmserve.models.rows"):
        assert align_linear_rows(model) == 1 and isinstance(model[0], RowAlignedLinear)
    assert "0 on our kernel (0 of them in bf16 panels, exact), 1 padded to 4 rows" in caplog.text
