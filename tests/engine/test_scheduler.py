"""Token and sequence budgets, chunked prefill and preemption, without a model."""

from __future__ import annotations

from tests.engine.test_block_manager import make_seq
from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.scheduler import Scheduler
from vlmserve.engine.sequence import SequenceStatus


def advance(sched: Scheduler) -> list[tuple[int, int]]:
    batch = sched.schedule()
    for seq, n in zip(batch.sequences, batch.num_tokens):
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(7)  # a decoded token
    return [(s.seq_id, n) for s, n in zip(batch.sequences, batch.num_tokens)]


def test_chunked_prefill_splits_long_prompts_by_token_budget() -> None:
    bm = BlockManager(64, 4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=10, enable_chunked_prefill=True)
    long, short = make_seq(list(range(25))), make_seq(list(range(3)), seq_id=1)
    sched.add(long)
    sched.add(short)
    assert advance(sched) == [(0, 10)]
    assert advance(sched) == [(0, 10)]
    assert advance(sched) == [(0, 5), (1, 3)]
    assert advance(sched) == [(0, 1), (1, 1)]  # both decoding


def test_sequence_budget_limits_admission() -> None:
    bm = BlockManager(64, 4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=100, enable_chunked_prefill=True)
    seqs = [make_seq([1, 2, 3], seq_id=i) for i in range(3)]
    for s in seqs:
        sched.add(s)
    assert [i for i, _ in advance(sched)] == [0, 1]
    assert seqs[2].status is SequenceStatus.WAITING


def test_preemption_frees_the_newest_and_recomputes_it_later() -> None:
    bm = BlockManager(5, 4, enable_prefix_caching=False)  # 4 usable blocks
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, enable_chunked_prefill=True)
    a, b = make_seq(list(range(8)), seq_id=0), make_seq(list(range(7)), seq_id=1)
    sched.add(a)
    sched.add(b)
    advance(sched)  # a: 2 blocks, b: 2 blocks, each has now one more token
    assert bm.num_free_blocks == 0
    batch = sched.schedule()  # a needs a 3rd block: b is preempted
    assert batch.num_preempted == 1
    assert [s.seq_id for s in batch.sequences] == [0]
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0
    assert sched.waiting[0] is b
