"""Paged KV-cache bookkeeping: block allocation, reference counts and the prefix cache.

A full block is named by a SHA-256 digest chained over its tokens, the digest of the blocks
before it, and the multimodal items (by key) whose placeholders fall in it — the placeholder
token ids alone are the same for every image, so without the item keys two different images
would share cached blocks. A match is trusted without comparing tokens, so the name must be
collision-resistant: Python's `hash()` is not (issue 9 found two 16-token blocks with equal
tuple hashes, and one prompt was answered from the other's KV). The chain starts from a root
digest of a per-engine random seed and the request's cache salt, so requests with different
salts never share blocks. Freed blocks keep their digest and stay reusable until they are
reallocated, oldest-freed first.
"""

from __future__ import annotations

import hashlib
import os
import struct
from array import array
from collections import OrderedDict

from vlmserve.engine.sequence import Sequence

NULL_BLOCK = 0  # reserved: padded block-table entries point here
SEED_BYTES = 32


def root_digest(seed: bytes, cache_salt: str | None) -> bytes:
    """Where a request's chain of block digests starts: requests share cached blocks only
    when their salts are equal. `surrogatepass` keeps any str hashable (offline callers)."""
    salt = (cache_salt or "").encode("utf-8", "surrogatepass")
    return hashlib.sha256(seed + struct.pack("<Q", len(salt)) + salt).digest()


def block_hash(parent: bytes, seq: Sequence, block_index: int, block_size: int) -> bytes:
    """SHA-256 of the parent digest, the block's token ids (fixed width: the block size fixes
    their count) and each multimodal item in the block, every variable-length field
    length-prefixed so that no two different inputs share an encoding."""
    start = block_index * block_size
    end = start + block_size
    digest = hashlib.sha256(parent)
    digest.update(array("I", seq.token_ids[start:end]).tobytes())
    for item in seq.request.mm_items:
        if item.overlaps(start, end):
            key = (item.digest or item.key).encode("utf-8", "surrogatepass")
            # A video's temporal spacing changes its M-RoPE positions: part of the name too.
            digest.update(struct.pack("<Q", len(key)) + key)
            digest.update(struct.pack("<qd", item.offset - start, item.seconds_per_grid))
    return digest.digest()


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool,
        seed: bytes | None = None,
    ) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        # Random per engine (tests may fix it): block digests cannot be precomputed offline.
        self.seed = seed if seed is not None else os.urandom(SEED_BYTES)
        self.hashes: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # block digest -> block id
        # Free blocks in reuse order; an OrderedDict lets a prefix hit take one from the middle.
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self.num_prefix_queries = 0
        self.num_prefix_hits = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        return 1.0 - len(self.free) / (self.num_blocks - 1)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def allocate_prefix(self, seq: Sequence) -> None:
        """First admission: reuse cached blocks for the longest matching full-block prefix.

        The positions whose logits are needed are left uncached, so the step computes them:
        the last token (it samples the next one), or every scored position.
        """
        assert not seq.block_table
        self._extend_hashes(seq, seq.num_tokens)
        if not self.enable_prefix_caching:
            return
        max_blocks = seq.first_logit_position // self.block_size
        hits: list[int] = []
        for h in seq.block_hashes[:max_blocks]:
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        self.num_prefix_queries += seq.num_tokens
        self.num_prefix_hits += len(hits) * self.block_size
        for block in hits:
            if self.ref_counts[block] == 0:
                del self.free[block]
            self.ref_counts[block] += 1
        seq.block_table = hits
        seq.num_computed_tokens = len(hits) * self.block_size
        seq.num_cached_tokens = max(seq.num_cached_tokens, seq.num_computed_tokens)

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Make room for `num_tokens` tokens in total; False (and no change) if out of blocks."""
        needed = self.blocks_needed(seq, num_tokens)
        if needed > len(self.free):
            return False
        for _ in range(needed):
            block, _ = self.free.popitem(last=False)
            old = self.hashes[block]
            if old is not None:
                if self.cached.get(old) == block:
                    del self.cached[old]
                self.hashes[block] = None
            self.ref_counts[block] = 1
            seq.block_table.append(block)
        return True

    def commit(self, seq: Sequence) -> None:
        """Register the blocks that became full and computed, so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        self._extend_hashes(seq, num_full * self.block_size)
        for i in range(num_full):
            block = seq.block_table[i]
            if self.hashes[block] is not None:
                continue
            h = seq.block_hashes[i]
            self.hashes[block] = h
            self.cached.setdefault(h, block)

    def free_sequence(self, seq: Sequence) -> None:
        # Release tail first: the end of a sequence is the least likely to be shared again, so
        # it should be the first to be reallocated.
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self.hashes[block] is None:
                    self.free[block] = None
                    self.free.move_to_end(block, last=False)
                else:
                    self.free[block] = None
        seq.block_table = []

    def _extend_hashes(self, seq: Sequence, num_tokens: int) -> None:
        num_full = num_tokens // self.block_size
        while len(seq.block_hashes) < num_full:
            i = len(seq.block_hashes)
            parent = (
                seq.block_hashes[-1]
                if seq.block_hashes
                else root_digest(self.seed, seq.request.cache_salt)
            )
            seq.block_hashes.append(block_hash(parent, seq, i, self.block_size))

    def slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + (
            position % self.block_size
        )
