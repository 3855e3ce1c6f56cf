"""Budget-aware closing: find a short valid completion from any grammar state.

llguidance has no "shortest completion" query, so we search for one. The search runs on a
second matcher for the same grammar built over a 256-entry byte vocabulary: its masks cost
microseconds whatever the model's vocabulary, and grammars are byte-level anyway. It is a
weighted A* over bytes (cost = bytes appended, heuristic = open JSON brackets and strings,
forced bytes taken in one jump, states with equal mask, cost and nesting merged), bounded in
expansions. What it returns is *valid* by construction (the matcher accepted every byte and
ended accepting); shortness is best effort. The byte path is then split into model tokens by
longest match, each token checked against the real matcher.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import time
from dataclasses import dataclass
from typing import NamedTuple

import llguidance
import numpy as np

BYTE_EOS = 256
# Search costs. A byte the search chose costs more than a forced one: forced bytes are the
# grammar's own progress (and tokenize densely), so cheap forced runs pull the search through
# required structure instead of lengthening a number or string it is already in. An open
# bracket or string is scored as the closers it still needs, weighted above a chosen byte
# (an inadmissible heuristic: fewer expansions, completions not always the very shortest).
_CHOSEN_BYTE_COST = 4
_FORCED_BYTE_COST = 1
_CLOSER_COST = 12
ASTAR_MAX_NODES = 2_000
DEFAULT_MAX_LEVELS = 1_024
_BEAM_WIDTH = 4
_BEAM_CLOSER_COST = 4


class _ByteVocabulary:
    """The TokenizerWrapper protocol llguidance needs: one token per byte, plus EOS."""

    def __init__(self) -> None:
        self.eos_token_id = BYTE_EOS
        self.bos_token_id = None
        self.tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]
        self.special_token_ids = [BYTE_EOS]

    def __call__(self, data: bytes) -> list[int]:
        return list(data)


@functools.cache
def byte_tokenizer() -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteVocabulary()), slices=[])


def new_byte_matcher(grammar: str) -> llguidance.LLMatcher:
    """A matcher for `grammar` over bytes. Measured: with the default initial lexer fuel a
    byte-level matcher rejected valid bytes where the model-vocabulary matcher accepted them
    (a 30-word `pattern` under `maxLength`); ten times the fuel fixes it at ~ms extra."""
    limits = llguidance.LLParserLimits(initial_lexer_fuel=10_000_000)
    return llguidance.LLMatcher(byte_tokenizer(), grammar, log_level=0, limits=limits)


class Nesting(NamedTuple):
    """How deep a JSON-like text is: the closer's heuristic, and exact for JSON. A named
    tuple, not a frozen dataclass: the search makes one per candidate byte, and a frozen
    dataclass's __init__ cost a third of a search's time (measured)."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    def scan(self, data: bytes) -> Nesting:
        depth, in_string, escaped = self.depth, self.in_string, self.escaped
        for byte in data:
            if in_string:
                if escaped:
                    escaped = False
                elif byte == 0x5C:  # backslash
                    escaped = True
                elif byte == 0x22:
                    in_string = False
            elif byte == 0x22:
                in_string = True
            elif byte in (0x7B, 0x5B):  # { [
                depth += 1
            elif byte in (0x7D, 0x5D) and depth > 0:
                depth -= 1
        return Nesting(depth, in_string, escaped)

    @property
    def closers_needed(self) -> int:
        return self.depth + int(self.in_string)


# Bytes that usually lead to equivalent states (letters in a string, digits in a number).
_CLASSES = [range(0x61, 0x7B), range(0x41, 0x5B), range(0x31, 0x3A)]
_CLASS_OF = {byte: index for index, members in enumerate(_CLASSES) for byte in members}


# A search meets the same few states again and again (every letter inside a string leads to
# the same mask): what depends only on a mask and a nesting is computed once per process.
@functools.lru_cache(maxsize=4096)
def _candidate_bytes(mask: bytes, one_per_class: bool) -> tuple[int, ...]:
    """The bytes to try after a state whose byte-matcher mask is `mask`."""
    bits = np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")
    allowed = np.flatnonzero(bits[:256]).tolist()
    # A shortest completion never needs a multi-byte character when ASCII is allowed.
    allowed = [b for b in allowed if b < 0x80] or allowed
    if not one_per_class:
        return tuple(allowed)
    taken: set[int] = set()
    candidates = []
    for byte in allowed:
        group = _CLASS_OF.get(byte)
        if group is None or group not in taken:
            candidates.append(byte)
            if group is not None:
                taken.add(group)
    return tuple(candidates)


@functools.lru_cache(maxsize=4096)
def _after_byte(state: Nesting, byte: int) -> Nesting:
    return state.scan(bytes([byte]))


@functools.lru_cache(maxsize=4096)
def _children(mask: bytes, state: Nesting) -> tuple[tuple[int, int], ...]:
    """(byte, closers needed after it) for each byte the best-first search tries."""
    return tuple(
        (byte, _after_byte(state, byte).closers_needed)
        for byte in _candidate_bytes(mask, one_per_class=True)
    )


@dataclass(frozen=True)
class _Deadline:
    at: float | None

    def check(self) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise TimeoutError("the search for a valid completion ran past its deadline")


def shortest_completion(
    matcher: llguidance.LLMatcher,
    nesting: Nesting,
    max_nodes: int,
    max_levels: int = DEFAULT_MAX_LEVELS,
    deadline: float | None = None,
) -> bytes | None:
    """Bytes that take a byte-vocabulary matcher from its state to an accepting one.

    First a best-first search trying one byte per class (letter, capital, non-zero digit):
    near-shortest results and cheap when the completion is short. When that runs out of
    expansions (long required content, many optional branches), a beam search that appends
    one chosen byte per level and keeps the states that made the most forced progress: it
    cannot stall, so it finds a completion needing at most `max_levels` chosen bytes. The
    matcher is not modified. None when the search visits `max_nodes` matcher states (a
    count, not a clock: results must not depend on machine load), the beam runs past
    `max_levels`, or every path hits a matcher error (llguidance's lexer limits).
    `deadline` (a `time.monotonic()` value) only bounds a caller's wait: past it the search
    raises TimeoutError (compiles use it; a grammar can make each state cost ~100 us).
    """
    budget = [max_nodes]
    stop = _Deadline(deadline)
    found = _search(matcher, nesting, min(ASTAR_MAX_NODES, max_nodes), budget, stop)
    return found if found is not None else _beam(matcher, nesting, max_levels, budget, stop)


def _search(
    matcher: llguidance.LLMatcher,
    nesting: Nesting,
    max_expansions: int,
    budget: list[int],
    stop: _Deadline,
) -> bytes | None:
    if matcher.is_accepting():
        return b""
    order = itertools.count()
    # Entries: (priority, -cost, tie, parent matcher, byte to append, path, run, nesting), where
    # run counts the bytes chosen since the last forced ones. Children are materialised only
    # when popped: most never are.
    heap: list[tuple[int, int, int, llguidance.LLMatcher, int, bytes, int, Nesting]] = [
        (0, 0, next(order), matcher, -1, b"", 0, nesting)
    ]
    # States are merged on (mask, cost, closers, run). The run stands in for the counters a
    # mask cannot show (minLength, {n} repeats): without it "aa" merges into a sibling
    # path's "a" and a string never reaches its minimum length.
    seen: set[tuple[bytes, int, int, int]] = set()
    for _ in range(max_expansions):
        if not heap:
            return None
        budget[0] -= 1
        stop.check()
        _, neg_cost, _, parent, byte, path, run, state = heapq.heappop(heap)
        cost = -neg_cost
        node = parent.deep_copy()
        if byte >= 0:
            node.consume_token(byte)
            path += bytes([byte])
            state = _after_byte(state, byte)
        forced = node.compute_ff_bytes()
        if forced:
            node.consume_tokens(list(forced))
            path += forced
            state = state.scan(forced)
            cost += _FORCED_BYTE_COST * len(forced)
            run = 0
        if node.is_accepting():
            return path
        mask = node.compute_bitmask()
        key = (mask, cost, state.closers_needed, run)
        if key in seen or node.is_error():
            continue
        seen.add(key)
        child_cost = cost + _CHOSEN_BYTE_COST
        for child, closers in _children(mask, state):
            priority = child_cost + _CLOSER_COST * closers
            entry = (priority, -child_cost, next(order), node, child, path, run + 1, state)
            heapq.heappush(heap, entry)
    return None


def _beam(
    matcher: llguidance.LLMatcher,
    nesting: Nesting,
    max_levels: int,
    budget: list[int],
    stop: _Deadline,
) -> bytes | None:
    # Entries: (rank, node, path, forced bytes so far, run, nesting); lower rank is better.
    beam = [(0, matcher, b"", 0, 0, nesting)]
    for _ in range(max_levels):
        children: dict[
            tuple[bytes, int, int], tuple[int, llguidance.LLMatcher, bytes, int, int, Nesting]
        ] = {}
        for _, parent, path, forced_total, run, state in beam:
            for byte in _candidate_bytes(parent.compute_bitmask(), one_per_class=False):
                budget[0] -= 1
                if budget[0] < 0:
                    return None
                stop.check()
                node = parent.deep_copy()
                node.consume_token(byte)
                forced = node.compute_ff_bytes()
                node.consume_tokens(list(forced))
                if node.is_error():
                    continue
                step = bytes([byte]) + forced
                if node.is_accepting():
                    return path + step
                child_state = state.scan(step)
                child_forced = forced_total + len(forced)
                child_run = 0 if forced else run + 1
                # Forced bytes are progress through required structure; open brackets and
                # strings are work still to do. All children chose the same number of bytes.
                rank = _BEAM_CLOSER_COST * child_state.closers_needed - child_forced
                key = (node.compute_bitmask(), child_state.closers_needed, child_run)
                if key not in children or rank < children[key][0]:
                    children[key] = (rank, node, path + step, child_forced, child_run, child_state)
        beam = sorted(children.values(), key=lambda entry: entry[0])[:_BEAM_WIDTH]
        if not beam:
            return None
    return None


class Spelling:
    """Greedy longest-match spellings of byte strings in a model vocabulary. The same closes
    come back from step to step and request to request, so spellings are memoised (a
    bounded table, emptied when full)."""

    def __init__(self, vocab: dict[bytes, int], max_token_bytes: int, memo_size: int = 1 << 16):
        self._vocab = vocab
        self._max_token_bytes = max_token_bytes
        self._memo: dict[bytes, tuple[tuple[int, int], ...]] = {}
        self._memo_size = memo_size

    def longest(self, data: bytes, pos: int, max_size: int) -> tuple[int, int] | None:
        """(token, size) of the longest token of at most `max_size` bytes at data[pos:]."""
        for size in range(min(max_size, self._max_token_bytes, len(data) - pos), 0, -1):
            token = self._vocab.get(data[pos : pos + size])
            if token is not None:
                return token, size
        return None

    def run(self, data: bytes) -> tuple[tuple[int, int], ...]:
        """(token, size) of the longest token at every position from the start of `data`
        on, until its end or a position where no token fits."""
        spelled = self._memo.get(data)
        if spelled is None:
            found, pos = [], 0
            while (longest := self.longest(data, pos, len(data))) is not None:
                found.append(longest)
                pos += longest[1]
            spelled = tuple(found)
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            self._memo[data] = spelled
        return spelled


def split_into_tokens(
    matcher: llguidance.LLMatcher,
    data: bytes,
    spelling: Spelling,
    prefix: list[int] | None = None,
) -> list[int] | None:
    """Longest-match tokens for `data` that the real matcher accepts from its state after
    `prefix` (tokens it is known to accept; not part of the result).

    Not the canonical tokenization, but fewer tokens than bytes and each one verified. At
    every position the longest vocabulary token the matcher accepts is taken. Checked with
    `validate_tokens`, which answers without changing the matcher's state (committing tokens
    and rolling back cost ~30x more, most of all the token that completes a grammar): the
    longest token at every position is proposed at once and one call says how many hold;
    only where one fails are the shorter ones tried. None if some position has no
    acceptable token.
    """
    tokens = list(prefix or ())
    skip = len(tokens)
    pos = 0
    while pos < len(data):
        proposed = spelling.run(data[pos:])
        end = pos + sum(size for _, size in proposed)
        held = matcher.validate_tokens(tokens + [t for t, _ in proposed]) - len(tokens)
        if held < 0:
            return None  # the prefix itself is not accepted
        for token, size in proposed[:held]:
            tokens.append(token)
            pos += size
        if held == len(proposed):
            if end < len(data):
                return None  # no vocabulary token at all at `end`
            break
        # The longest token at pos fails here: try the shorter ones, longest first.
        _, size = proposed[held]
        while True:
            shorter = spelling.longest(data, pos, size - 1)
            if shorter is None:
                return None
            token, size = shorter
            if matcher.validate_tokens([*tokens, token]) == len(tokens) + 1:
                tokens.append(token)
                pos += size
                break
    return tokens[skip:]
