"""Our attention kernel (models/native.py) against the torch paths it replaces on CPU, side by
side in one process: decode steps over a paged cache much larger than the CPU's caches,
blocks in random order (as a busy server's are), and whole prompts.

    .venv/bin/python benchmarks/attention_kernel.py [--threads 1] [--repeats 5]

Times are CPU ms per layer (median of `--repeats` runs of 10 calls; a decode call cycles through
12 layer caches so that each layer reads memory, as a real step does).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from vlmserve.models import attention, native

# (name, query heads, KV heads, head dim): the decoders of the tiny presets and Qwen2-VL-7B.
SHAPES = [("tiny", 4, 2, 32), ("small", 12, 2, 64), ("7b", 28, 4, 128)]
LAYERS = 12


def _decode_case(
    heads: int, kv_heads: int, dim: int, batch: int, context: int, cache_tokens: int
) -> tuple[list[torch.Tensor], torch.Tensor, list[int], torch.Tensor]:
    block = 16
    blocks = cache_tokens // block
    caches = [
        native.allocate_huge(attention.kv_cache_shape(blocks, block, kv_heads, dim), torch.bfloat16)
        for _ in range(LAYERS)
    ]
    for cache in caches:
        cache.normal_()
    lens = [context - (i * 37) % (context // 3) for i in range(batch)]  # mixed lengths
    per_row = -(-max(lens) // block)
    tables = (torch.randperm(blocks - 1)[: batch * per_row] + 1).view(batch, per_row)
    q = torch.randn(batch, heads, dim).to(torch.bfloat16)
    return caches, q, lens, tables


def _median_ms(call: Callable[[], object], repeats: int, calls_per_run: int) -> float:
    """Median CPU ms of one of the `calls_per_run` calls `call` makes."""
    call()
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(10):
            call()
        runs.append((time.process_time() - start) / (10 * calls_per_run) * 1e3)
    return statistics.median(runs)


def _torch_decode(
    caches: list[torch.Tensor], q: torch.Tensor, lens: list[int], tables: torch.Tensor
) -> None:
    for cache in caches:
        attention._decode_attention(q, cache, lens, tables, q.shape[-1] ** -0.5)


def _kernel_decode(
    caches: list[torch.Tensor], q: torch.Tensor, lens: list[int], tables: torch.Tensor
) -> None:
    rows, lengths = torch.arange(q.shape[0]), torch.tensor(lens)
    for cache in caches:
        native.paged_attention(q, cache, tables, rows, lengths, q.shape[-1] ** -0.5)


def bench_decode(repeats: int) -> None:
    print("decode: one query per row, 12 layer caches of ~128 MiB, blocks in random order")
    print(
        f"{'shape':>6} {'batch':>5} {'context':>7} {'torch ms':>9} {'kernel ms':>10} {'speed-up':>9}"
    )
    for name, heads, kv_heads, dim in SHAPES:
        context = 1000 if name == "7b" else 380
        cache_tokens = 2**19 // (kv_heads * dim // 64)
        for batch in (1, 8, 32):
            case = _decode_case(heads, kv_heads, dim, batch, context, cache_tokens)
            slow = _median_ms(functools.partial(_torch_decode, *case), repeats, LAYERS)
            fast = _median_ms(functools.partial(_kernel_decode, *case), repeats, LAYERS)
            print(
                f"{name:>6} {batch:>5} {context:>7} {slow:>9.3f} {fast:>10.3f} {slow / fast:>8.2f}x"
            )


def bench_prefill(repeats: int) -> None:
    print("whole prompts (causal), `small` heads: the torch path is matmuls or SDPA by size")
    print(f"{'tokens':>6} {'torch ms':>9} {'kernel ms':>10} {'speed-up':>9}")
    heads, kv_heads, dim, block = 12, 2, 64, 16
    for length in (300, 1000, 3000):
        blocks = -(-length // block) + 1
        cache = torch.randn(attention.kv_cache_shape(blocks, block, kv_heads, dim))
        cache = cache.to(torch.bfloat16)
        flat = cache.view(2, kv_heads, -1, dim)[:, :, block : block + length]
        k, v = flat[0].transpose(0, 1).contiguous(), flat[1].transpose(0, 1).contiguous()
        q = torch.randn(length, heads, dim).to(torch.bfloat16)
        tables = torch.arange(1, blocks).view(1, -1)
        rows, lens = torch.zeros(length, dtype=torch.long), torch.arange(1, length + 1)
        dense = functools.partial(attention.dense_attention, q, k, v, dim**-0.5, True)
        paged = functools.partial(native.paged_attention, q, cache, tables, rows, lens, dim**-0.5)
        slow, fast = _median_ms(dense, repeats, 1), _median_ms(paged, repeats, 1)
        print(f"{length:>6} {slow:>9.2f} {fast:>10.2f} {slow / fast:>8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both paths)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if native.load() is None:
        raise SystemExit("the native kernel is not available here (see the warning above)")
    torch.manual_seed(0)
    bench_decode(args.repeats)
    bench_prefill(args.repeats)


if __name__ == "__main__":
    main()
