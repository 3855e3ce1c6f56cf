"""The attention paths agree: written-out grouped matmuls, SDPA, the paged torch paths and our
kernel (models/native.py)."""

from __future__ import annotations

import pytest
import torch

from tests.models.kernel import require_kernel
from vlmserve.models import attention, native
from vlmserve.models.attention import AttentionMetadata, dense_attention, paged_attention


@pytest.fixture(params=["kernel", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """paged_attention with our kernel, and with the torch paths (devices and machines
    without it)."""
    if request.param == "torch":
        monkeypatch.setattr(native, "load", lambda: None)
    else:
        require_kernel()
    return str(request.param)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Plain attention with repeated KV heads: [Lq, Hq, D]."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    if causal:
        offset = k.shape[0] - q.shape[0]
        future = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).triu(offset + 1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


@pytest.mark.parametrize("matmul", [True, False])
@pytest.mark.parametrize(("q_len", "k_len", "causal"), [(7, 7, True), (3, 10, True), (9, 9, False)])
def test_dense_attention_paths_match(
    monkeypatch: pytest.MonkeyPatch, matmul: bool, q_len: int, k_len: int, causal: bool
) -> None:
    if not matmul:
        monkeypatch.setattr(attention, "MATMUL_ATTENTION_MAX_SCORES", 0)
    torch.manual_seed(0)
    q, k, v = torch.randn(q_len, 6, 8), torch.randn(k_len, 2, 8), torch.randn(k_len, 2, 8)
    out = dense_attention(q, k, v, 8**-0.5, causal)
    assert torch.allclose(out, reference(q, k, v, causal), atol=1e-5)


def test_paged_decode_matches_dense_attention(backend: str) -> None:
    """Two sequences of different lengths decode one token each through the paged cache."""
    torch.manual_seed(0)
    block_size, lens = 4, [5, 11]
    cache = torch.zeros(attention.kv_cache_shape(8, block_size, 2, 8))
    tables = torch.tensor([[1, 2, 0], [3, 4, 5]])
    contexts = [(torch.randn(n, 2, 8), torch.randn(n, 2, 8)) for n in lens]
    for (k, v), table in zip(contexts, tables):
        slots = torch.tensor(
            [int(table[p // block_size]) * block_size + p % block_size for p in range(len(k) - 1)]
        )
        attention.write_kv(cache, k[:-1], v[:-1], slots)
    q = torch.randn(2, 6, 8)
    last = [n - 1 for n in lens]
    meta = AttentionMetadata(
        query_lens=[1, 1],
        context_lens=lens,
        slot_mapping=torch.tensor(
            [int(t[p // block_size]) * block_size + p % block_size for t, p in zip(tables, last)]
        ),
        block_tables=tables,
        block_size=block_size,
    )
    new_k = torch.stack([k[-1] for k, _ in contexts])
    new_v = torch.stack([v[-1] for _, v in contexts])
    out = paged_attention(q, new_k, new_v, cache, meta, 8**-0.5)
    for i, (k, v) in enumerate(contexts):
        expected = reference(q[i : i + 1], k, v, causal=True)
        assert torch.allclose(out[i : i + 1], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("lens", "new"),
    [
        ([6, 9], [1, 3]),  # a decode and a few forced tokens: one batched call
        ([6, 30, 7], [2, 20, 7]),  # a prompt chunk (one by one) and a whole prompt
    ],
)
def test_mixed_batch_rows_of_every_kind(backend: str, lens: list[int], new: list[int]) -> None:
    """Decode rows, short multi-token rows (e.g. forced tokens), prompt chunks and whole
    prompts in one step each see exactly their own context."""
    torch.manual_seed(1)
    block_size = 4
    per_seq = -(-max(lens) // block_size)
    cache = torch.zeros(attention.kv_cache_shape(1 + per_seq * len(lens), block_size, 2, 8))
    tables = torch.tensor(
        [list(range(1 + i * per_seq, 1 + (i + 1) * per_seq)) for i in range(len(lens))]
    )
    contexts = [(torch.randn(n, 2, 8), torch.randn(n, 2, 8)) for n in lens]

    def slot(table: torch.Tensor, p: int) -> int:
        return int(table[p // block_size]) * block_size + p % block_size

    for (k, v), table, n, m in zip(contexts, tables, lens, new):
        attention.write_kv(
            cache,
            k[: n - m],
            v[: n - m],
            torch.tensor([slot(table, p) for p in range(n - m)], dtype=torch.long),
        )
    meta = AttentionMetadata(
        query_lens=new,
        context_lens=lens,
        slot_mapping=torch.tensor(
            [slot(t, p) for t, n, m in zip(tables, lens, new) for p in range(n - m, n)]
        ),
        block_tables=tables,
        block_size=block_size,
    )
    q = torch.randn(sum(new), 6, 8)
    new_k = torch.cat([k[n - m :] for (k, _), n, m in zip(contexts, lens, new)])
    new_v = torch.cat([v[n - m :] for (_, v), n, m in zip(contexts, lens, new)])
    out = paged_attention(q, new_k, new_v, cache, meta, 8**-0.5)
    start = 0
    for (k, v), m in zip(contexts, new):
        expected = reference(q[start : start + m], k, v, causal=True)
        assert torch.allclose(out[start : start + m], expected, atol=1e-5)
        start += m
    assert max(new) > attention.MAX_BATCHED_QUERY_TOKENS or max(new) < 4
