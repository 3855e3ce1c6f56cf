"""Incremental detokenization and stop strings.

Byte-level BPE tokens can end in the middle of a UTF-8 character, so text is only released
once it decodes cleanly; decoding a short window (`prefix_offset`..end) keeps each step
O(1) instead of re-decoding the whole output.
"""

from __future__ import annotations

from tokenizers import Tokenizer

INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: list[str],
        include_stop_str_in_output: bool,
        skip_special_tokens: bool,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.include_stop = include_stop_str_in_output
        self.skip_special = skip_special_tokens
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""
        # Text that could still turn into a stop string is held back from streaming.
        self.max_stop_len = max((len(s) for s in stop), default=0)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def add(self, token_id: int) -> str | None:
        """Append a token; returns the stop string if one now appears in the text."""
        self.tokens.append(token_id)
        prefix = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(INCOMPLETE):
            new_text = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.tokens)
            start = max(0, len(self.text) - self.max_stop_len + 1)
            self.text += new_text
            return self._check_stop(start)
        return None

    def _check_stop(self, search_from: int) -> str | None:
        for stop in self.stop:
            idx = self.text.find(stop, search_from)
            if idx != -1:
                end = idx + len(stop) if self.include_stop else idx
                self.text = self.text[:end]
                return stop
        return None

    def flush(self) -> None:
        """At the end, release bytes that never completed a character (as U+FFFD)."""
        if self.read_offset < len(self.tokens):
            prefix = self._decode(self.tokens[self.prefix_offset : self.read_offset])
            full = self._decode(self.tokens[self.prefix_offset :])
            self.text += full[len(prefix) :]
            self.read_offset = len(self.tokens)

    def stream_safe_text(self, finished: bool) -> str:
        """The text that may be shown now: all of it when finished, else all but the tail that
        could still become a stop string."""
        if finished or not self.stop:
            return self.text
        return self.text[: max(0, len(self.text) - self.max_stop_len + 1)]
