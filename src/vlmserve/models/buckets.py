"""Sizes rounded up to a few distinct values, for CPU matmuls that are compiled per shape.

torch runs bf16 matmuls on CPU through oneDNN, which JIT-compiles a kernel for each distinct
shape (1-4 ms each, measured here) and keeps it in its primitive cache (up to 1024 kernels,
near 1 MiB each). A step's token count, a decode batch's size and its context length change
nearly every step: taken exactly, they compiled kernels nearly every step, and those kernels
held ~870 MiB of a soak server's memory (memray). Rounded up to one of eight sizes per power
of two, they reuse kernels: the soak server's resident memory after its first minute fell
from ~1,060 to ~710 MiB at the same throughput (docs/benchmarks.md, "Resident memory"). The
padding (zero rows, masked positions) costs at most 1/8 more work and leaves every result
bit-identical (tests/models/test_buckets.py).
"""

from __future__ import annotations


def bucket(n: int) -> int:
    """`n` rounded up to one of eight sizes per power of two (exact up to 8)."""
    if n <= 8:
        return n
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step
