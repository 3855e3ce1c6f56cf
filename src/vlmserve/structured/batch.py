"""One step's grammars as the sampler sees them: a cheap check of each row's unmasked pick,
and the masks of the rows that need one, filled in parallel with the GIL released.

At a 152k vocabulary a mask costs ~0.3 ms to fill and as much to apply, per row and step,
while the unmasked winner usually is a token the grammar allows (inside strings, most are):
checking it costs microseconds (`RequestGrammar.surely_allows`). So the sampler picks first
and masks only the rows whose pick fails (see runner/sampler.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Hashable, Sequence

import llguidance
import torch

from vlmserve.structured.bitmask import allocate_bitmask
from vlmserve.structured.request import RequestGrammar


@functools.cache
def _executor() -> llguidance.LLExecutor:
    # llguidance's thread pool, one per process, a thread per core: masks are filled while
    # the model is idle between forwards (its default, 80 % of the cores, is one thread on
    # a 2-core machine).
    return llguidance.LLExecutor(num_threads=min(32, os.cpu_count() or 1))


def fill_bitmasks(grammars: Sequence[RequestGrammar], bitmask: torch.Tensor) -> None:
    """Row i of `bitmask` (int32 [len(grammars), W], contiguous, on the CPU) gets
    `grammars[i].fill_bitmask`'s mask. The masks llguidance computes are filled by its
    executor in parallel, with the GIL released; tight rows (the close's next token) here."""
    if bitmask.device.type != "cpu" or bitmask.dtype != torch.int32:
        raise ValueError("bitmask must be an int32 tensor on the CPU")
    words = bitmask.numpy()
    if words.shape[0] != len(grammars) or not words.flags["C_CONTIGUOUS"]:
        raise ValueError("bitmask must be contiguous with one row per grammar")
    jobs: list[tuple[llguidance.LLMatcher, int]] = []
    first: dict[Hashable, int] = {}  # a mask key -> the row that computes it
    copies: list[tuple[int, int]] = []  # (row, the row whose mask it takes)
    for i, grammar in enumerate(grammars):
        matcher = grammar.mask_matcher()
        if matcher is None:
            grammar.fill_bitmask(words[i])  # tight, or known: no matcher needed
            continue
        # Requests in lock step (one schema, admitted together) reach the same state in
        # the same step: one computes the mask, the others copy it.
        key = grammar.mask_key()
        if key is not None and key in first:
            copies.append((i, first[key]))
            continue
        if key is not None:
            first[key] = i
        jobs.append((matcher, i))
    if jobs:
        row_bytes = words.shape[1] * words.itemsize
        _executor().unsafe_compute_mask_ptr(jobs, words.ctypes.data, row_bytes, words.shape[0])
    for _, i in jobs:
        words[i] &= grammars[i].allowed_words[: words.shape[1]]
        grammars[i].remember_mask(words[i])
    for i, source in copies:
        words[i] = words[source]
        grammars[i].remember_mask(words[i])


class GrammarMasks:
    """The grammars of one step's logits rows (row index -> grammar)."""

    def __init__(self, grammars: dict[int, RequestGrammar], vocab_size: int) -> None:
        self._grammars = grammars
        self.vocab_size = vocab_size

    @property
    def rows(self) -> list[int]:
        return sorted(self._grammars)

    def surely_allows(self, row: int, token_id: int) -> bool:
        """True only if row's mask allows the token (False: fill the mask to know)."""
        return self._grammars[row].surely_allows(token_id)

    def worth_walking(self, row: int) -> bool:
        """Whether a greedy walk past forbidden winners may settle `row` for less than its
        mask: not where `surely_allows` would say False of every token, nor where the mask
        is remembered already (memo.MASKS: then it costs a copy)."""
        grammar = self._grammars[row]
        return grammar.can_vouch() and grammar.known_mask() is None

    def surely_forbids(self, row: int, token_id: int) -> bool:
        """True only if row's mask forbids the token (False: it may allow it)."""
        return self._grammars[row].surely_forbids(token_id)

    def fill(self, rows: list[int]) -> torch.Tensor:
        """The masks of `rows`, one bitmask row each (int32 [len(rows), W], on the CPU)."""
        bitmask = allocate_bitmask(len(rows), self.vocab_size)
        fill_bitmasks([self._grammars[row] for row in rows], bitmask)
        return bitmask
