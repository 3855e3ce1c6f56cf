"""A pair of different 16-token blocks whose CPython tuple hashes are equal, with token ids
inside the tiny test model's vocabulary: the prefix-cache poisoning of issue 9, where the
block manager named a block `hash((parent, tuple(token_ids), items))` and trusted a match.

CPython's tuple hash (xxHash-style, `Objects/tupleobject.c`) folds each item's hash (for a
small int, the int itself) into a 64-bit accumulator: `acc = rotl31(acc + lane * P2) * P1`.
The last step is a bijection of `acc + lane * P2`, so two blocks collide exactly when their
accumulators before the last token differ by `(b - a) * P2` for last tokens `a`, `b`. That
turns the search into a near-collision of `acc * P2^-1` within the vocabulary's width: 2^27
candidate prefixes instead of a 2^32 birthday search. `python -m tests.engine.hash_collision`
finds a new pair in under a minute on one core (about 1 GB of memory); tests use the stored one.
"""

from __future__ import annotations

import numpy as np

MASK = (1 << 64) - 1
P1 = 11400714785074694791
P2 = 14029467366897019727
P5 = 2870177450012600261
P2_INV = pow(P2, -1, 1 << 64)

# Twelve tokens of the tiny tokenizer's "The quick brown fox jumps over the lazy dog and ..."
COMMON = [1831, 1337, 886, 297, 327, 1118, 282, 78, 87, 945, 2916, 82]
GRID = 512  # tokens 0..2 range over [0, GRID); 3..14 are COMMON; 15 fixes the hash up
VOCAB = 5000  # the tiny tokenizer's ordinary tokens

# Found by `find_pair()` (below): equal `hash(tuple(...))`, different tokens.
BLOCK_A = [108, 329, 211, *COMMON, 4850]
BLOCK_B = [373, 121, 454, *COMMON, 0]


def _step(acc: int, lane: int) -> int:
    acc = (acc + lane * P2) & MASK
    acc = ((acc << 31) | (acc >> 33)) & MASK
    return (acc * P1) & MASK


def tuple_hash(tokens: list[int]) -> int:
    """CPython's `hash(tuple(tokens))` for small non-negative ints, as an unsigned value."""
    acc = P5
    for token in tokens:
        acc = _step(acc, token)
    return (acc + (len(tokens) ^ (P5 ^ 3527539))) & MASK


def _steps(acc: np.ndarray, lanes: list[int]) -> np.ndarray:
    p1, p2 = np.uint64(P1), np.uint64(P2)
    for lane in lanes:
        acc += np.uint64(lane) * p2
        acc = (acc << np.uint64(31)) | (acc >> np.uint64(33))
        acc *= p1
    return acc


def _scaled(t0: int) -> np.ndarray:
    """`acc * P2^-1` before the last token, for every (t1, t2) after `t0`, flattened.

    Varying the *first* tokens lets twelve more rounds mix them: varying the last ones
    leaves an additive structure that keeps the values apart.
    """
    t = np.arange(GRID, dtype=np.uint64)
    p1, p2 = np.uint64(P1), np.uint64(P2)
    acc1 = np.uint64(_step(P5, t0))
    acc2 = acc1 + t * p2
    acc2 = ((acc2 << np.uint64(31)) | (acc2 >> np.uint64(33))) * p1
    acc3 = acc2[:, None] + t[None, :] * p2
    acc3 = ((acc3 << np.uint64(31)) | (acc3 >> np.uint64(33))) * p1
    return _steps(acc3.ravel(), COMMON) * np.uint64(P2_INV)


def find_pair() -> tuple[list[int], list[int]]:
    with np.errstate(over="ignore"):
        scaled = np.empty(GRID**3, dtype=np.uint64)
        for t0 in range(GRID):
            scaled[t0 * GRID * GRID : (t0 + 1) * GRID * GRID] = _scaled(t0)
        scaled.sort()  # in place: 1 GB, no index array
        found = None
        chunk = 1 << 24
        for start in range(0, len(scaled) - 1, chunk):
            end = min(start + chunk, len(scaled) - 1)
            gaps = scaled[start + 1 : end + 1] - scaled[start:end]
            hits = np.nonzero(gaps < np.uint64(VOCAB))[0]
            if len(hits):
                i = start + int(hits[0])
                found = int(scaled[i]), int(scaled[i + 1])
                break
        del scaled
        if found is None:
            raise RuntimeError("no near-collision in this grid; change COMMON or GRID")
        # Which (t0, t1, t2) gave the two values: one more pass over the grid.
        prefixes = {}
        for t0 in range(GRID):
            block = _scaled(t0)
            for value in found:
                where = np.nonzero(block == np.uint64(value))[0]
                if len(where):
                    prefixes[value] = [t0, int(where[0]) // GRID, int(where[0]) % GRID]
    lo, hi = found
    gap = (hi - lo) & MASK
    # scaled(lo) - scaled(hi) = -gap = b - a: last tokens a = gap, b = 0 (both < VOCAB).
    a, b = [*prefixes[lo], *COMMON, gap], [*prefixes[hi], *COMMON, 0]
    assert a != b and tuple_hash(a) == tuple_hash(b)
    return a, b


if __name__ == "__main__":
    first, second = find_pair()
    print(f"BLOCK_A = {first}\nBLOCK_B = {second}")
