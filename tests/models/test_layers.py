"""Layer building blocks: prepacked bf16 linears give the same bits as `nn.Linear`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmserve.models.layers import PackedLinear, prepack_linears

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN"
)


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
