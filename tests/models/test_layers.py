"""Layer building blocks: prepacked bf16 linears and concatenated (fused) projections give
the same bits as the separate `nn.Linear`s."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmserve.models.layers import GatedMLP, PackedLinear, concat_linears, prepack_linears

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN"
)


def can_pack_bf16() -> bool:
    """oneDNN packs bf16 weights only on CPUs with AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=torch.bfloat16))
    except RuntimeError:
        return False
    return True


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 40, bias=True)
        self.inner = nn.Sequential(nn.Linear(40, 24, bias=False), nn.SiLU())
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight  # tied: must stay shared, not packed twice


def test_prepacked_linears_give_the_same_bits() -> None:
    torch.manual_seed(0)
    net = Net().to(torch.bfloat16)
    reference = Net().to(torch.bfloat16)
    reference.load_state_dict(net.state_dict())
    reference.head.weight = reference.embed.weight
    if not can_pack_bf16():  # the layers stay F.linear's
        assert prepack_linears(net) == 0 and type(net.proj) is nn.Linear
        return
    assert prepack_linears(net) == 2
    assert isinstance(net.proj, PackedLinear) and isinstance(net.inner[0], PackedLinear)
    assert type(net.head) is nn.Linear and net.head.weight is net.embed.weight
    # The model reports the same size and the same parameter names.
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    assert list(net.state_dict()) == list(reference.state_dict())
    for shape in [(1, 16), (7, 16), (3, 5, 16)]:
        x = torch.randn(shape).to(torch.bfloat16)
        with torch.inference_mode():
            assert torch.equal(net.proj(x), reference.proj(x))
            hidden = reference.proj(x)
            assert torch.equal(net.inner(hidden), reference.inner(hidden))


def test_float32_layers_are_left_alone() -> None:
    net = Net()
    assert prepack_linears(net) == 0
    assert type(net.proj) is nn.Linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_concatenated_linears_give_the_separate_outputs(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    parts = [nn.Linear(16, n, bias=True).to(dtype) for n in (24, 8, 8)]
    fused = concat_linears(parts)
    if fused is None:
        # Refused only where one GEMM would change bits: where the GEMM's sums depend on the
        # output width (float32 on an AVX2 EPYC, measured).
        weight = torch.cat([p.weight for p in parts])
        bias = torch.cat([p.bias for p in parts])
        with torch.inference_mode():
            assert any(
                not torch.equal(
                    torch.nn.functional.linear(x, weight, bias),
                    torch.cat([p(x) for p in parts], dim=-1),
                )
                for x in (torch.randn(rows, 16).to(dtype) for rows in (1, 7, 32, 64))
            )
        return
    assert fused.out_features == 40
    for rows in (1, 5, 64):
        x = torch.randn(rows, 16).to(dtype)
        with torch.inference_mode():
            assert torch.equal(fused(x), torch.cat([p(x) for p in parts], dim=-1))


def test_linears_that_cannot_share_a_gemm_are_not_concatenated() -> None:
    assert concat_linears([nn.Linear(16, 8), nn.Linear(12, 8)]) is None  # input sizes
    assert concat_linears([nn.Linear(16, 8), nn.Linear(16, 8, bias=False)]) is None
    assert concat_linears([nn.Linear(16, 8), nn.Linear(16, 8).to(torch.bfloat16)]) is None


def test_fused_gated_mlp_gives_the_same_bits() -> None:
    torch.manual_seed(0)
    mlp = GatedMLP(16, 40, "silu", bias=True).to(torch.bfloat16)
    x = torch.randn(9, 16).to(torch.bfloat16)
    with torch.inference_mode():
        before = mlp(x)
        assert mlp.fuse()
        assert mlp.gate_up_proj is not None and not hasattr(mlp, "gate_proj")
        assert torch.equal(mlp(x), before)
