"""Row-aligned float32 linears (models/rows.py): a row's bits do not depend on how many rows
share the call, and the layer keeps its parameters."""

from __future__ import annotations

import torch
from torch import nn

from vlmserve.models.rows import RowAlignedLinear, align_linear_rows, rows_vary


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


def test_aligned_models_give_batch_invariant_rows_and_keep_their_weights() -> None:
    """Whatever the probe decides here, a model's rows do not vary afterwards: padded where
    the GEMM varies (the EPYC), left alone where it does not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 128), nn.Linear(128, 10), nn.Linear(128, 384))
    model.append(nn.Linear(8, 4).bfloat16())
    model[1].weight = model[0].weight  # tied, as an LM head to its embedding
    names = list(model.state_dict())
    varied = [rows_vary(model[1]), rows_vary(model[2])]
    assert align_linear_rows(model) == sum(varied)
    assert [isinstance(model[i], RowAlignedLinear) for i in (1, 2)] == varied
    assert type(model[3]) is nn.Linear  # bf16: not float32's GEMM
    assert model[1].weight is model[0].weight and list(model.state_dict()) == names
    x = torch.randn(24, 128)
    with torch.inference_mode():
        for layer in (model[1], model[2]):
            full = layer(x)
            assert all(torch.equal(layer(x[:rows]), full[:rows]) for rows in range(1, 14))
