"""Continuous batching: which sequences run in the next step, and how many tokens each.

Each step has a token budget (`max_num_batched_tokens`) and a sequence budget
(`max_num_seqs`). Running sequences go first (decodes, forced tokens, the rest of a chunked
prefill), then waiting ones are admitted in arrival order. When the KV cache runs out, the
most recently admitted running sequence is preempted: its blocks are freed and it is
recomputed later (its tokens are kept, so the output is unchanged).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    sequences: list[Sequence]
    num_tokens: list[int]  # new tokens computed for each sequence this step
    num_preempted: int = 0

    @property
    def empty(self) -> bool:
        return not self.sequences


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool,
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence, front: bool = False) -> None:
        """Queue `seq`; `front` for work of a request already admitted (a scoring request's
        second phase), which should not wait behind new arrivals."""
        if front:
            self.waiting.appendleft(seq)
        else:
            self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        batch = ScheduledBatch([], [])
        preempted = False
        queue = list(self.running)
        while queue:
            seq = queue.pop(0)
            if budget == 0:
                break
            wanted = seq.num_tokens - seq.num_computed_tokens
            if wanted == 0:
                continue
            count = min(wanted, budget) if self.enable_chunked_prefill else wanted
            if count > budget:
                continue
            while not self.block_manager.allocate(seq, seq.num_computed_tokens + count):
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                batch.num_preempted += 1
                preempted = True
                if victim is seq:
                    break
            else:
                batch.sequences.append(seq)
                batch.num_tokens.append(count)
                budget -= count
        # Admitting new work right after a preemption would only thrash the cache.
        if not preempted:
            self._admit(batch, budget)
        return batch

    def _admit(self, batch: ScheduledBatch, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table and seq.num_computed_tokens == 0:
                self.block_manager.allocate_prefix(seq)
            wanted = seq.num_tokens - seq.num_computed_tokens
            count = min(wanted, budget) if self.enable_chunked_prefill else wanted
            if count > budget or not self.block_manager.allocate(
                seq, seq.num_computed_tokens + count
            ):
                if not self.running and not batch.sequences:
                    # Nothing else holds blocks: this prompt can never fit.
                    raise MemoryError(
                        f"request {seq.request.request_id} needs more KV-cache blocks than the "
                        f"cache has ({self.block_manager.num_blocks - 1})"
                    )
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.sequences.append(seq)
            batch.num_tokens.append(count)
            budget -= count

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free_sequence(seq)
        seq.reset_for_recompute()
        self.running.remove(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence wherever it is and free its blocks."""
        self.block_manager.free_sequence(seq)
        seq.status = SequenceStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
