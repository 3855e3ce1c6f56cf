"""The byte side of one request's budget-aware closing: a byte matcher that follows the
request's output, the nesting scanned from it, and the closes found from its state, or
from the state after one more token without taking it.

A close is the previous one where it still completes (checked with `validate_tokens`, in
microseconds), else a search (closer.py), remembered across requests (memo.py). Spelling a
close in model tokens, and deciding what fits the budget, is the request's
(request.RequestGrammar).
"""

from __future__ import annotations

from collections.abc import Callable

import llguidance

from vlmserve.structured.closer import BYTE_EOS, Nesting, new_byte_matcher, shortest_completion
from vlmserve.structured.memo import SEARCHES, output_key

# Limits (matcher states visited, ~5 us each) for the closer's search. From the current state
# (compile, after a rollback) a failure is an error, so it may search long (~1 s); when
# vetting a sampled token in steer() a failure only means "take the known close instead", so
# it must be quick (~10 ms).
SEARCH_NODES = 200_000
STEER_SEARCH_NODES = 2_000


class ByteTrack:
    """One request's output as bytes, on the byte matcher the closer searches from."""

    def __init__(self, byte_matcher: llguidance.LLMatcher, grammar: str) -> None:
        self._bytes = byte_matcher
        self._grammar = grammar
        self._log: list[int] = []  # what the byte matcher consumed, to rebuild it
        self.nesting = Nesting()
        self._history: list[tuple[int, Nesting]] = []  # per token: bytes consumed, nesting before

    def advance(self, data: bytes, eos: bool = False) -> None:
        """Follow one accepted token: its bytes `data`, or the end (`eos`)."""
        consumed = [BYTE_EOS] if eos else list(data)
        self._log += consumed
        if not self._bytes.consume_tokens(consumed):
            self._rebuild()
        self._history.append((len(consumed), self.nesting))
        self.nesting = self.nesting.scan(data)

    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` tokens (the caller checked there are as many)."""
        undone = self._history[-num_tokens:]
        del self._history[-num_tokens:]
        undone_bytes = sum(count for count, _ in undone)
        self._bytes.rollback(undone_bytes)
        del self._log[len(self._log) - undone_bytes :]
        self.nesting = undone[0][1]

    def find(self, hint: bytes | None, max_nodes: int = SEARCH_NODES) -> bytes | None:
        """A close from here: `hint` (the previous close) where it still completes, after
        free text (a string goes on) as is, after a token that replaced its first bytes (a
        date's digits) minus those bytes; else a search."""
        candidates = []
        if hint is not None and self._history:
            candidates = [hint[self._history[-1][0] :], hint]
        data = next((c for c in candidates if self.completes(c)), None)
        if data is None:
            data = self._search(lambda: self._bytes, self._log, self.nesting, max_nodes)
        if data is None and max_nodes >= SEARCH_NODES:
            self._rebuild()
            data = shortest_completion(self._bytes, self.nesting, max_nodes)
        return data

    def after(self, data: bytes, hint: bytes) -> bytes | None:
        """What `find(hint, STEER_SEARCH_NODES)` finds once the bytes `data` (a token the
        grammar allows) are taken, without taking them: the same candidates in the same
        order, checked with `validate_tokens` instead of commit and rollback."""
        if hint.startswith(data):
            return hint[len(data) :]  # the hint completes, with these bytes first
        after = list(data)
        found = next((c for c in (hint[len(data) :], hint) if self.completes(c, after)), None)
        if found is not None:
            return found

        def probe() -> llguidance.LLMatcher:
            matcher = self._bytes.deep_copy()
            if not matcher.consume_tokens(after):
                # The shared lexer cache ran out (see _rebuild): as taking the token would,
                # continue on a private byte matcher.
                self._rebuild()
                matcher = self._bytes.deep_copy()
                if not matcher.consume_tokens(after):
                    raise RuntimeError(f"byte matcher diverged: {matcher.get_error()[:200]}")
            return matcher

        nesting = self.nesting.scan(data)
        return self._search(probe, self._log + after, nesting, STEER_SEARCH_NODES)

    def completes(self, data: bytes, after: list[int] | None = None) -> bool:
        """Whether `data` (after the bytes `after`) takes the byte matcher to an accepting
        state: EOS is accepted exactly where the grammar may end."""
        probe = (after or []) + list(data) + [BYTE_EOS]
        return bool(self._bytes.validate_tokens(probe) == len(probe))

    def _search(
        self,
        matcher: Callable[[], llguidance.LLMatcher],
        log: list[int],
        nesting: Nesting,
        max_nodes: int,
    ) -> bytes | None:
        """shortest_completion from the byte matcher `matcher()` makes, in this grammar's
        state after the bytes `log`: remembered across requests (structured/memo.py), and
        the matcher made only when the search runs."""
        output = output_key(log)
        key = None if output is None else (self._grammar, output, nesting, max_nodes)
        found = None if key is None else SEARCHES.get(key)
        if found is None:
            found = shortest_completion(matcher(), nesting, max_nodes)
            if found is not None and key is not None:
                SEARCHES.put(key, found)
        return found

    def _rebuild(self) -> None:
        """A private byte matcher replaying this request's bytes.

        Deep copies share llguidance's lexer cache and its size limit; the closer's searches
        can exhaust it ("too many expressions"), after which valid bytes fail. A new matcher
        has a cache of its own.
        """
        self._bytes = new_byte_matcher(self._grammar)
        if not self._bytes.consume_tokens(self._log):
            raise RuntimeError(f"byte matcher diverged: {self._bytes.get_error()[:200]}")
