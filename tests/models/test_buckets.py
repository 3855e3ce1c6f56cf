"""Shape buckets (models/buckets.py): few distinct sizes, little padding, and padding that
changes no bit of any result — of a packed linear layer, or of a decode row whose batch is
padded to a longer context."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.models.test_layers import can_pack_bf16
from vlmserve.models import attention
from vlmserve.models.buckets import bucket
from vlmserve.models.layers import PackedLinear

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available() or not can_pack_bf16(),
    reason="this torch or CPU cannot pack bf16 weights (oneDNN)",
)


def test_buckets_are_few_and_waste_at_most_an_eighth() -> None:
    sizes = range(1, 4097)
    assert [bucket(n) for n in range(1, 9)] == list(range(1, 9))
    for n in sizes:
        assert n <= bucket(n) <= n * 9 / 8 and bucket(bucket(n)) == bucket(n)
    assert all(bucket(n) <= bucket(n + 1) for n in sizes)
    # Exact sizes would be 4096 kernels; eight per power of two past 8: 8 + 8 * 9.
    assert len({bucket(n) for n in sizes}) <= 80


@needs_onednn
@pytest.mark.parametrize("features", [(64, 192), (96, 1000)])
def test_a_packed_linear_gives_the_same_bits_for_every_row_count(
    features: tuple[int, int],
) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(*features, bias=True).to(torch.bfloat16)
    packed = PackedLinear(linear)
    for rows in (1, 7, 9, 17, 100, 257, 1000):  # exact, and padded to 18, 104, 288, 1024
        x = torch.randn(rows, features[0]).to(torch.bfloat16)
        assert torch.equal(packed(x), linear(x)), rows
        assert torch.equal(packed(x.view(1, rows, -1)), linear(x).view(1, rows, -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_decode_row_has_the_same_bits_whatever_its_batch_pads_to(dtype: torch.dtype) -> None:
    """Row 0's context (37 tokens) alone pads to 3 blocks; next to a 600-token row its batch
    pads to bucket(38) = 40 blocks. Its output must not change by a bit."""
    torch.manual_seed(0)
    block_size, heads, kv_heads, dim = 16, 4, 2, 32
    cache = torch.randn(attention.kv_cache_shape(64, block_size, kv_heads, dim)).to(dtype)
    cache[:, :, 0] = 0  # block 0: the padding block, never a sequence's
    short = torch.arange(1, 4)
    long = torch.arange(4, 42)
    q = torch.randn(2, heads, dim).to(dtype)
    alone = attention._decode_attention(q[:1], cache, [37], short[None], 0.125)
    tables = torch.zeros(2, len(long), dtype=torch.long)
    tables[0, : len(short)], tables[1] = short, long
    together = attention._decode_attention(q, cache, [37, 600], tables, 0.125)
    assert bucket(38) == 40 and torch.equal(alone[0], together[0])


def test_a_decode_row_has_the_same_bits_whatever_its_batch_size_pads_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """17 decoding rows pad to bucket(17) = 18 (a zero query over one token of block 0): the
    matmuls see 18 rows, each row's output is the one it gets alone, the padding is dropped."""
    bmm, batches = torch.bmm, []

    def recording_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        batches.append(a.shape[0])
        return bmm(a, b)

    monkeypatch.setattr(torch, "bmm", recording_bmm)
    torch.manual_seed(0)
    block_size, heads, kv_heads, dim = 16, 4, 2, 32
    cache = torch.randn(attention.kv_cache_shape(80, block_size, kv_heads, dim)).to(torch.bfloat16)
    cache[:, :, 0] = 0
    rows = 17
    q = torch.randn(rows, heads, dim).to(torch.bfloat16)
    lens = [5 + 3 * i for i in range(rows)]
    tables = torch.arange(1, 1 + rows * 4).view(rows, 4)
    together = attention._decode_attention(q, cache, lens, tables, 0.125)
    assert bucket(rows) == 18 and batches == [kv_heads * 18] * 2
    assert together.shape == (rows, heads, dim)
    for i in range(rows):
        alone = attention._decode_attention(
            q[i : i + 1], cache, lens[i : i + 1], tables[i : i + 1], 0.125
        )
        assert torch.equal(alone[0], together[i]), i
