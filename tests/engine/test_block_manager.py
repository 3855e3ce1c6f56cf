"""Block allocation, prefix-cache hits (keyed by tokens and image keys) and eviction order."""

from __future__ import annotations

import torch

from tests.engine.hash_collision import BLOCK_A, BLOCK_B
from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.sequence import MultiModalItem, Request, Sequence
from vlmserve.types import SamplingParams


def make_seq(
    tokens: list[int],
    items: list[MultiModalItem] | None = None,
    seq_id: int = 0,
    cache_salt: str | None = None,
) -> Sequence:
    request = Request(
        f"r{seq_id}",
        None,
        tokens,
        items or [],
        torch.zeros(3, len(tokens)),
        0,
        SamplingParams(),
        8,
        cache_salt=cache_salt,
    )
    seq = Sequence(seq_id, request, 0, list(tokens), detokenizer=None)  # type: ignore[arg-type]
    request.sequences.append(seq)
    return seq


def run_prefill(bm: BlockManager, seq: Sequence) -> None:
    bm.allocate_prefix(seq)
    assert bm.allocate(seq, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens
    bm.commit(seq)


def test_prefix_hit_reuses_full_blocks_and_leaves_last_token() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    first = make_seq(list(range(12)))
    run_prefill(bm, first)
    second = make_seq(list(range(12)), seq_id=1)
    bm.allocate_prefix(second)
    # 12 tokens = 3 full blocks, but the last token must be computed: only 2 blocks reused.
    assert second.num_computed_tokens == 8
    assert second.block_table == first.block_table[:2]
    assert bm.ref_counts[first.block_table[0]] == 2


def test_different_images_do_not_share_blocks() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    tokens = [1, 9, 9, 9, 9, 2, 3, 4, 5]
    a = make_seq(tokens, [MultiModalItem("image", "cat", 1, 4, (1, 4, 4), None)])
    run_prefill(bm, a)
    b = make_seq(tokens, [MultiModalItem("image", "dog", 1, 4, (1, 4, 4), None)], seq_id=1)
    bm.allocate_prefix(b)
    assert b.num_computed_tokens == 0
    c = make_seq(tokens, [MultiModalItem("image", "cat", 1, 4, (1, 4, 4), None)], seq_id=2)
    bm.allocate_prefix(c)
    assert c.num_computed_tokens == 8


def test_freed_blocks_stay_cached_until_reused() -> None:
    bm = BlockManager(num_blocks=5, block_size=4, enable_prefix_caching=True)
    a = make_seq(list(range(9)))
    run_prefill(bm, a)
    bm.free_sequence(a)
    assert bm.num_free_blocks == 4
    again = make_seq(list(range(9)), seq_id=1)
    bm.allocate_prefix(again)
    assert again.num_computed_tokens == 8
    bm.free_sequence(again)
    # Filling the whole cache with other tokens evicts the cached blocks.
    other = make_seq([100 + i for i in range(16)], seq_id=2)
    run_prefill(bm, other)
    bm.free_sequence(other)
    third = make_seq(list(range(9)), seq_id=3)
    bm.allocate_prefix(third)
    assert third.num_computed_tokens == 0


def test_allocate_fails_without_side_effects() -> None:
    bm = BlockManager(num_blocks=3, block_size=4, enable_prefix_caching=False)
    seq = make_seq(list(range(12)))
    assert not bm.allocate(seq, 12)
    assert seq.block_table == [] and bm.num_free_blocks == 2
    assert bm.allocate(seq, 8)
    assert bm.usage() == 1.0


def test_blocks_colliding_under_pythons_hash_do_not_share_kv() -> None:
    # The stored pair collides under the old naming, hash((parent, tuple(tokens), items)).
    assert BLOCK_A != BLOCK_B
    assert hash((None, tuple(BLOCK_A), ())) == hash((None, tuple(BLOCK_B), ()))
    bm = BlockManager(num_blocks=16, block_size=16, enable_prefix_caching=True)
    suffix = [7, 8, 9]
    run_prefill(bm, make_seq(BLOCK_A + suffix))
    other = make_seq(BLOCK_B + suffix, seq_id=1)
    bm.allocate_prefix(other)
    assert other.num_computed_tokens == 0 and other.num_cached_tokens == 0
    same = make_seq(BLOCK_A + suffix, seq_id=2)
    bm.allocate_prefix(same)
    assert same.num_computed_tokens == 16


def test_cache_salt_separates_prefixes_and_the_seed_renames_blocks() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    run_prefill(bm, make_seq(list(range(9)), cache_salt="tenant-1"))
    for seq_id, salt, cached in ((1, "tenant-2", 0), (2, None, 0), (3, "tenant-1", 8)):
        seq = make_seq(list(range(9)), seq_id=seq_id, cache_salt=salt)
        bm.allocate_prefix(seq)
        assert seq.num_computed_tokens == cached, salt
    # Block names depend on the engine's random seed: not computable ahead of time.
    a = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    b = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    first, second = make_seq(list(range(5))), make_seq(list(range(5)), seq_id=1)
    a.allocate_prefix(first)
    b.allocate_prefix(second)
    assert first.block_hashes != second.block_hashes
    assert len(first.block_hashes[0]) == 32  # a SHA-256 digest
