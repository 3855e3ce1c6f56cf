"""Our C kernels (models/native.py): attention right, the same bits for a token whichever step,
chunk or batch it comes in, and a clean fall-back to the torch paths where it cannot build."""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.models.kernel import require_kernel
from tests.models.test_attention import reference
from vlmserve.models import attention, native
from vlmserve.models.attention import AttentionMetadata, paged_attention
from vlmserve.models.layers import RMSNorm

BLOCK = 4


@pytest.fixture(autouse=True)
def _kernel_rebuilt_after() -> Iterator[None]:
    """Tests here change how the kernel loads: the next user loads it afresh."""
    yield
    native.reset()


def _sequence(length: int, kv_heads: int, dim: int, dtype: torch.dtype, first_block: int):
    k = torch.randn(length, kv_heads, dim).to(dtype)
    v = torch.randn(length, kv_heads, dim).to(dtype)
    table = list(range(first_block, first_block + -(-length // BLOCK)))
    return k, v, table


def _step(
    cache: torch.Tensor,
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], int, int]],
) -> list[torch.Tensor]:
    """One paged_attention call; each row is (q, k, v, table, start, end): the tokens
    start..end-1 of a sequence are new, its context ends at end."""
    width = max(len(table) for _, _, _, table, _, _ in rows)
    tables = torch.tensor([table + [0] * (width - len(table)) for _, _, _, table, _, _ in rows])
    slots = [
        table[p // BLOCK] * BLOCK + p % BLOCK
        for _, _, _, table, start, end in rows
        for p in range(start, end)
    ]
    meta = AttentionMetadata(
        query_lens=[end - start for *_, start, end in rows],
        context_lens=[end for *_, end in rows],
        slot_mapping=torch.tensor(slots),
        block_tables=tables,
        block_size=BLOCK,
    )
    q = torch.cat([q[start:end] for q, _, _, _, start, end in rows])
    k = torch.cat([k[start:end] for _, k, _, _, start, end in rows])
    v = torch.cat([v[start:end] for _, _, v, _, start, end in rows])
    out = paged_attention(q, k, v, cache, meta, q.shape[-1] ** -0.5)
    return list(out.split([end - start for *_, start, end in rows]))


@pytest.mark.parametrize(
    ("dtype", "dim", "heads", "atol"),
    [
        # Head dims that are a multiple of 32: the vector path; 32, 64 and 128 sum the values
        # in passes of 12, 6 and 3 query heads (a group of 7 takes two passes at 64 and three
        # at 128), other multiples in the generic loop.
        (torch.bfloat16, 32, 6, 2e-2),
        (torch.bfloat16, 64, 6, 2e-2),
        (torch.bfloat16, 64, 14, 2e-2),
        (torch.bfloat16, 96, 6, 2e-2),
        (torch.bfloat16, 128, 6, 2e-2),
        (torch.bfloat16, 128, 14, 2e-2),
        (torch.bfloat16, 8, 6, 2e-2),  # others: the portable loops
        (torch.float32, 8, 6, 1e-5),
        # Float32 at head dims 32, 64 and 128: on AVX2 CPUs without AVX-512 BF16 (both
        # dtypes there) the values sum in passes of 6 heads, so a group of 7 takes two.
        (torch.float32, 32, 6, 1e-5),
        (torch.float32, 64, 14, 1e-5),
        (torch.float32, 128, 6, 1e-5),
    ],
)
def test_the_kernel_matches_plain_attention(
    dtype: torch.dtype, dim: int, heads: int, atol: float
) -> None:
    require_kernel()
    torch.manual_seed(0)
    cache = torch.zeros(attention.kv_cache_shape(64, BLOCK, 2, dim), dtype=dtype)
    lens, new = [37, 5, 20], [1, 5, 3]  # a decode, a whole prompt, a chunk after a cached part
    seqs, first = [], 1
    for n in lens:
        seqs.append(_sequence(n, 2, dim, dtype, first))
        first += len(seqs[-1][2])
    qs = [torch.randn(n, heads, dim).to(dtype) for n in lens]
    for (k, v, table), n, m in zip(seqs, lens, new):  # the context before the new tokens
        slots = torch.tensor([table[p // BLOCK] * BLOCK + p % BLOCK for p in range(n - m)])
        attention.write_kv(cache, k[: n - m], v[: n - m], slots.long())
    outs = _step(
        cache, [(q, k, v, table, n - m, n) for q, (k, v, table), n, m in zip(qs, seqs, lens, new)]
    )
    for out, q, (k, v, _), n, m in zip(outs, qs, seqs, lens, new):
        expected = reference(q[n - m : n].float(), k.float(), v.float(), causal=True)
        assert torch.allclose(out.float(), expected, atol=atol), (n, m)


@pytest.mark.parametrize("block", [3, 16])
def test_any_block_size_is_addressed(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a power-of-two size are found by shifts, others by division: both right."""
    monkeypatch.setattr(sys.modules[__name__], "BLOCK", block)
    test_the_kernel_matches_plain_attention(torch.bfloat16, 64, 6, 2e-2)
    test_the_kernel_matches_plain_attention(torch.float32, 8, 6, 1e-5)
    test_the_kernel_matches_plain_attention(torch.float32, 64, 14, 1e-5)


@pytest.mark.parametrize(
    ("dtype", "dim"), [(torch.bfloat16, 64), (torch.float32, 8), (torch.float32, 64)]
)
def test_a_token_has_the_same_bits_whatever_step_chunk_or_batch_it_comes_in(
    dtype: torch.dtype, dim: int
) -> None:
    """A prompt computed whole, in chunks, token by token (decode steps) or next to other
    sequences gives every token the same bits: cached prefixes, chunked prefill, jump-ahead
    and batching cannot change an output."""
    require_kernel()
    torch.manual_seed(0)
    cache = torch.zeros(attention.kv_cache_shape(64, BLOCK, 2, dim), dtype=dtype)
    length = 29
    k, v, table = _sequence(length, 2, dim, dtype, 1)
    q = torch.randn(length, 6, dim).to(dtype)
    other = _sequence(13, 2, dim, dtype, 1 + len(table))
    other_q = torch.randn(13, 6, dim).to(dtype)
    whole = _step(cache, [(q, k, v, table, 0, length)])[0]
    chunked = torch.cat(
        [_step(cache, [(q, k, v, table, a, b)])[0] for a, b in ((0, 11), (11, 12), (12, 29))]
    )
    one_by_one = torch.cat([_step(cache, [(q, k, v, table, p, p + 1)])[0] for p in range(length)])
    batched = _step(cache, [(other_q, *other, 0, 13), (q, k, v, table, 0, length)])[1]
    for way in (chunked, one_by_one, batched):
        assert torch.equal(way, whole)


def test_threads_share_the_work_and_change_no_bit() -> None:
    require_kernel()
    torch.manual_seed(0)
    cache = torch.randn(attention.kv_cache_shape(80, BLOCK, 2, 64)).to(torch.bfloat16)
    tables = torch.arange(1, 73).view(6, 12)
    rows = torch.arange(6).repeat_interleave(4)  # 24 tokens, 48 (token, KV head) items
    lens = torch.arange(24) * 2 + 1
    q = torch.randn(24, 6, 64).to(torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = native.paged_attention(q, cache, tables, rows, lens, 0.125)
        torch.set_num_threads(3)
        shared = native.paged_attention(q, cache, tables, rows, lens, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert alone is not None and shared is not None and torch.equal(alone, shared)


def test_indices_outside_the_cache_are_refused_not_read() -> None:
    require_kernel()
    cache = torch.zeros(attention.kv_cache_shape(8, BLOCK, 2, 8))
    q = torch.randn(2, 6, 8)
    rows = torch.tensor([0, 0])
    for tables, lens in (
        (torch.tensor([[1, 8]]), torch.tensor([3, 5])),  # block 8 of 8
        (torch.tensor([[1, 2]]), torch.tensor([3, 9])),  # 9 tokens in two blocks of 4
        (torch.tensor([[1, 2]]), torch.tensor([0, 2])),  # a token that sees nothing
    ):
        with pytest.raises(IndexError, match="outside the KV cache"):
            native.paged_attention(q, cache, tables, rows, lens, 0.125)


def test_without_a_compiler_the_torch_paths_serve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    cache = torch.zeros(attention.kv_cache_shape(16, BLOCK, 2, 8))
    k, v, table = _sequence(9, 2, 8, torch.float32, 1)
    q = torch.randn(9, 6, 8)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("VLMSERVE_CACHE", str(tmp_path))  # no kernel built before
    native.reset()
    with caplog.at_level(logging.WARNING, logger="vlmserve.models.native"):
        assert native.load() is None
        out = _step(cache, [(q, k, v, table, 0, 9)])[0]
    assert "could not build the native attention kernel" in caplog.text
    assert "no-such-cc" in caplog.text
    assert torch.allclose(out, reference(q, k, v, causal=True), atol=1e-5)


def test_the_switch_turns_it_off_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()
    assert native.load() is None
    monkeypatch.setenv(native.ENV_SWITCH, "yes")
    native.reset()
    for _ in range(2):  # not only the first time
        with pytest.raises(ValueError, match="VLMSERVE_NATIVE_KERNELS must be 0 or 1, got 'yes'"):
            native.load()


def test_a_built_kernel_is_reused_and_a_changed_source_rebuilds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require_kernel()
    monkeypatch.setenv("VLMSERVE_CACHE", str(tmp_path))
    compiler = "cc"
    first = native._build(compiler)
    assert native._build(compiler) == first  # found, not rebuilt
    changed = tmp_path / "int8_rows.c"  # either source: here the second
    changed.write_text(native.SOURCES[1].read_text() + "\n/* changed */\n")
    monkeypatch.setattr(native, "SOURCES", (native.SOURCES[0], changed))
    second = native._build(compiler)
    assert second != first and second.exists()
    assert sorted(p.name for p in (tmp_path / "kernels").iterdir()) == sorted(
        [first.name, second.name]
    )  # no scratch folder left behind


@pytest.mark.skipif(sys.platform != "linux", reason="madvise(MADV_HUGEPAGE) is Linux's")
def test_a_kv_cache_is_advised_onto_huge_pages_and_zeroed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int, int]] = []

    def madvise(start: int, length: int, advice: int) -> int:
        calls.append((start, length, advice))
        return 0

    libc = SimpleNamespace(madvise=madvise)
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: libc)
    shape = (2, 2, 768, 16, 64)  # 6 MiB in bf16: at least one whole 2 MiB page inside
    tensor = native.allocate_huge(shape, torch.bfloat16)
    assert tensor.shape == shape and tensor.dtype == torch.bfloat16 and not tensor.any()
    [(start, length, advice)] = calls
    huge = 1 << 21
    assert advice == 14 and start % huge == 0 and length % huge == 0 and length >= huge
    assert tensor.data_ptr() <= start and start + length <= tensor.data_ptr() + tensor.nbytes
    calls.clear()
    native.allocate_huge((4, 1024), torch.bfloat16)  # 8 KiB: no whole huge page to advise
    assert calls == []


@pytest.mark.parametrize("dim", [8, 37, 1536])
def test_rms_norm_in_one_call_matches_torch_and_keeps_a_rows_bits(dim: int) -> None:
    """norm.c: right to float32 rounding, and a row's bits the same alone or among others
    (each row is summed on its own); the module takes it only where nothing asks for grads."""
    require_kernel()
    torch.manual_seed(dim)
    norm = RMSNorm(dim, 1e-6)
    norm.weight.data = torch.randn(dim)
    x = torch.randn(2, 11, dim) * 3
    reference = norm.weight * torch.nn.functional.rms_norm(x, (dim,), eps=1e-6)
    with torch.no_grad():
        out = norm(x)
        alone = [norm(x[b, i : i + 1]) for b in range(2) for i in range(11)]
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.cat(alone).view_as(out), out)
    direct = native.rms_norm(x, norm.weight.detach(), 1e-6)
    assert direct is not None and torch.equal(direct, out)
    # Not for what the kernel does not take: torch's path serves them.
    assert native.rms_norm(x.to(torch.bfloat16), norm.weight.detach(), 1e-6) is None
    assert native.rms_norm(x.transpose(0, 1), norm.weight.detach(), 1e-6) is None
    assert native.rms_norm(x[..., :-1], norm.weight.detach(), 1e-6) is None
    grads = norm(x)
    grads.sum().backward()  # with grads on, torch's differentiable path
    assert norm.weight.grad is not None


def test_rms_norm_without_kernels_is_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()
    norm = RMSNorm(16, 1e-5)
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(norm(x), norm.weight * torch.nn.functional.rms_norm(x, (16,), eps=1e-5))
