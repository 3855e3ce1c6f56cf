"""Per-request grammar state: mask, accept, jump-ahead, rollback and budget-aware closing.

The engine's loop for one constrained request, per step (see `testing.decode`):

    forced = g.forced_tokens()                 # append them all, no sampling
    ... or: g.fill_bitmask(row); sample t; t = g.steer(t)
    g.accept_token(t)                          # False: t was outside the mask (an engine bug)

With a budget (`max_tokens` at `new_request`) the invariant is: a valid completion of at most
`remaining` tokens is known from the current state. `steer` keeps it by swapping a sampled
token for the next closing token when the token would leave no room to close; once the
budget equals the closing length, `forced_tokens` returns the whole close.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import llguidance
import numpy as np
import torch

from vlmserve.structured.closer import Spelling, split_into_tokens
from vlmserve.structured.closing import ByteTrack
from vlmserve.structured.memo import MASKS, MAX_MASK_KEY_TOKENS


@dataclass(frozen=True)
class TokenView:
    """What a request needs to know about the model vocabulary (shared, read-only)."""

    token_bytes: list[bytes]  # b"" for special tokens
    vocab: dict[bytes, int]  # bytes -> lowest ordinary token id with those bytes
    max_token_bytes: int
    allowed_words: np.ndarray  # int32 bitmask words: ordinary tokens and EOS ids
    eos_token_ids: frozenset[int]
    fingerprint: str  # the tokenizer and the logits width: what else keys a mask (memo.MASKS)

    @functools.cached_property
    def spelling(self) -> Spelling:
        return Spelling(self.vocab, self.max_token_bytes)


@dataclass
class _Closing:
    """A valid completion from one state: its bytes, and their model tokens once someone
    needs them. Spelling a close costs more than finding one (a matcher check per token),
    and most closes are replaced a token later without ever being spelled: a close of n
    bytes has at most n tokens, so while n fits the budget, its tokens do not matter."""

    data: bytes
    tokens: list[int] | None = None


def _allows(words: np.ndarray, token_id: int) -> bool:
    return 0 <= token_id < 32 * words.shape[0] and bool(
        (int(words[token_id // 32]) >> (token_id % 32)) & 1
    )


class RequestGrammar:
    def __init__(
        self,
        matcher: llguidance.LLMatcher,
        byte_matcher: llguidance.LLMatcher,
        grammar: str,
        tokens: TokenView,
        max_tokens: int | None,
        shortest: tuple[bytes, tuple[int, ...]] | None = None,
    ) -> None:
        """`shortest`: the close from the initial state if known (the compile found it, and
        a search from here would find it again: the search is deterministic)."""
        self._matcher = matcher
        self._track = ByteTrack(byte_matcher, grammar)
        self._grammar = grammar
        self._tokens = tokens
        self._remaining = max_tokens
        self._closing = None if shortest is None else _Closing(shortest[0], list(shortest[1]))
        self._hint: bytes | None = None  # previous close, tried before searching again
        self._memo: tuple[int, _Closing] | None = None  # steer()'s look at one token
        self._token_log: list[int] = []  # the tokens accepted: with the grammar, a mask's key
        self._known: np.ndarray | None = None  # this state's remembered mask
        self._looked_up = False  # whether _known was looked up in this state
        # The last token `_accepts` checked in this state and its answer: the sampler's
        # probe and `steer` ask about the same token.
        self._checked: tuple[int, bool] | None = None

    @property
    def remaining(self) -> int | None:
        return self._remaining

    def is_terminated(self) -> bool:
        """True once nothing but EOS may follow (also right after a JSON's final `}`)."""
        return bool(self._matcher.is_stopped())

    def fill_bitmask(self, row: torch.Tensor | np.ndarray) -> None:
        """Write the allowed-token mask into one int32 row (llguidance layout, 1 bit/token)."""
        words = row.numpy() if isinstance(row, torch.Tensor) else row
        if words.dtype != np.int32 or not words.flags["C_CONTIGUOUS"]:
            raise ValueError("bitmask row must be a contiguous int32 array")
        if self._is_tight():
            words[:] = 0
            tokens = self.closing_tokens()[:1] or sorted(self._tokens.eos_token_ids)
            bits = words.view(np.uint32)
            for token in tokens:
                bits[token // 32] |= np.uint32(1 << (token % 32))
            return
        known = self.known_mask()
        if known is not None and known.shape == words.shape:
            words[:] = known
            return
        self._matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        words &= self._tokens.allowed_words[: words.shape[0]]
        self.remember_mask(words)

    def known_mask(self) -> np.ndarray | None:
        """The mask `fill_bitmask` writes here, if a request filled it in this state before
        (memo.MASKS: the same grammar, vocabulary and tokens make the same mask). Never for
        a tight budget: that mask is the close's next token, cheap and budget-dependent."""
        if not self._looked_up:
            key = self.mask_key()
            self._known = None if key is None else MASKS.get(key)
            self._looked_up = True
        return self._known

    def remember_mask(self, words: np.ndarray) -> None:
        """Keep `words`, this state's mask as `fill_bitmask` writes it, for later requests."""
        key = self.mask_key()
        if key is not None:
            self._known, self._looked_up = words.copy(), True
            MASKS.put(key, self._known)

    def mask_key(self) -> tuple[str, str, tuple[int, ...]] | None:
        """What decides this state's mask (memo.MASKS); None where it is not remembered."""
        if self._is_tight() or len(self._token_log) > MAX_MASK_KEY_TOKENS:
            return None
        return (self._tokens.fingerprint, self._grammar, tuple(self._token_log))

    def mask_matcher(self) -> llguidance.LLMatcher | None:
        """The matcher whose mask `fill_bitmask` writes before ANDing `allowed_words` (so that
        many rows can be filled at once, see `batch.fill_bitmasks`, which then calls
        `remember_mask`); None when `fill_bitmask` needs no matcher: the budget is tight and
        the mask is the close's next token, or the mask is known."""
        return None if self._is_tight() or self.known_mask() is not None else self._matcher

    @property
    def allowed_words(self) -> np.ndarray:
        """int32 words allowing only ordinary tokens and EOS: ANDed into every mask."""
        return self._tokens.allowed_words

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token. False leaves the state unchanged: the token is not allowed
        here (outside the mask, a special token or past the vocabulary), which means the
        caller sampled without the mask; the engine should fail that request."""
        memo, closing = self._memo, self._closing
        if not self._advance(token_id):
            return False
        if memo is not None and memo[0] == token_id:
            self._closing = memo[1]
        elif closing is not None and self._leads(closing, token_id):
            # The close went on past this token's bytes: the rest of it is the close from
            # here (what a search seeded with it would find first). Its spelling from here
            # is the old one minus its first token where that was this token: the split is
            # longest-match, position by position.
            after = closing.data[len(self._tokens.token_bytes[token_id]) :]
            tokens = closing.tokens
            self._closing = _Closing(
                after, tokens[1:] if tokens is not None and tokens[:1] == [token_id] else None
            )
        elif closing is not None:
            self._hint = closing.data
            if self._remaining is not None:
                # Under a budget, find the next close now, while the previous one can seed
                # it: a chain of closes never needs a search from scratch (which may fail
                # on grammars too hard for it).
                self._closing_for_state()
        return True

    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens (speculative decoding, stop strings)."""
        if num_tokens <= 0:
            return
        if num_tokens > len(self._token_log):
            raise ValueError(
                f"cannot roll back {num_tokens} tokens, only {len(self._token_log)} accepted"
            )
        self._matcher.rollback(num_tokens)
        self._track.rollback(num_tokens)
        del self._token_log[-num_tokens:]
        if self._remaining is not None:
            self._remaining += num_tokens
        self._closing = self._hint = self._memo = None
        self._known, self._looked_up, self._checked = None, False, None

    def forced_tokens(self) -> list[int]:
        """Tokens to append without sampling. Jump-ahead: llguidance's fast-forward tokens,
        which are the only tokens the mask allows at those positions, so the result equals
        step-by-step constrained decoding. When the budget is down to the closing length:
        the whole close."""
        if self.is_terminated():
            return []
        if self._is_tight():
            return self.closing_tokens()
        forced = list(self._matcher.compute_ff_tokens())
        if not forced or self._remaining is None:
            return forced
        # Forced bytes start every completion, so the close continues after them.
        closing = self._closing_for_state()
        data = b"".join(self._tokens.token_bytes[t] for t in forced)
        if not closing.data.startswith(data):
            return []
        if self._matcher.validate_tokens(forced) != len(forced):
            return []
        rest = closing.data[len(data) :]
        if len(forced) + len(rest) <= self._remaining:
            return forced  # the rest's tokens fit, however it is spelled
        after = self.tokens_for(rest, after=forced)
        return forced if len(forced) + len(after) <= self._remaining else []

    def steer(self, token_id: int) -> int:
        """The token to append for a sampled one: itself if a valid completion still fits the
        budget after it, else the next token of the close (EOS when already complete).

        Nothing is committed: the close after the token is found by probing (see
        `_closing_after`); accepting the token then reuses it."""
        if self._remaining is None:
            return token_id
        closing = self._closing_for_state()
        if self._leads(closing, token_id) and self._spelled(closing)[:1] == [token_id]:
            return token_id
        if self._is_tight() or not self._accepts(token_id):
            tokens = self._spelled(closing)
            return tokens[0] if tokens else min(self._tokens.eos_token_ids)
        self._memo = None
        after = self._closing_after(token_id, closing.data)
        if after is not None and self._fits(after, self._remaining - 1, after=[token_id]):
            self._memo = (token_id, after)
            return token_id
        tokens = self._spelled(closing)
        return tokens[0] if tokens else min(self._tokens.eos_token_ids)

    def surely_allows(self, token_id: int) -> bool:
        """True only if `fill_bitmask` would allow `token_id`, found without computing the
        mask: a sampler can keep an unmasked winner that passes and mask only the rows that
        fail. Exact where the mask is known (`known_mask`); else False where it cannot tell
        cheaply: where the next bytes are forced (llguidance's mask then allows only their
        canonical tokens, fewer than the grammar accepts) and for EOS."""
        if self._is_tight():
            return token_id in (self.closing_tokens()[:1] or self._tokens.eos_token_ids)
        known = self.known_mask()
        if known is not None:
            return _allows(known, token_id)
        if token_id in self._tokens.eos_token_ids or self._matcher.compute_ff_bytes():
            return False
        return self._accepts(token_id)

    def can_vouch(self) -> bool:
        """False where `surely_allows` is False for every token (the next bytes are forced and
        the mask is not known): a sampler's walk cannot settle this row, only its mask can."""
        return (
            self._is_tight()
            or self.known_mask() is not None
            or not self._matcher.compute_ff_bytes()
        )

    def surely_forbids(self, token_id: int) -> bool:
        """True only if `fill_bitmask` would forbid `token_id`: the mask never allows a token
        the grammar rejects (it may allow fewer than it accepts, never more). A greedy
        sampler can walk past rejected winners to the best allowed token without a mask.
        Never for EOS: a complete grammar's mask allows it where the matcher, stopped,
        rejects it."""
        if token_id in self._tokens.eos_token_ids:
            return False
        if self._is_tight():
            return token_id not in self.closing_tokens()[:1]
        known = self.known_mask()
        if known is not None:
            return not _allows(known, token_id)
        return not self._accepts(token_id)

    def _accepts(self, token_id: int) -> bool:
        """Whether accepting `token_id` would succeed, without changing state."""
        if self._checked is None or self._checked[0] != token_id:
            accepted = self._in_vocabulary(token_id) and (
                self._matcher.validate_tokens([token_id]) == 1
            )
            self._checked = (token_id, accepted)
        return self._checked[1]

    def _in_vocabulary(self, token_id: int) -> bool:
        """An ordinary token or an EOS id (never a special token or logits padding)."""
        return _allows(self._tokens.allowed_words, token_id)

    def min_tokens_to_finish(self) -> int:
        """Tokens in the shortest valid completion found from here (0 when complete)."""
        return len(self._spelled(self._closing_for_state()))

    def closing_tokens(self) -> list[int]:
        """One short valid completion from here, as model tokens."""
        return list(self._spelled(self._closing_for_state()))

    def tokens_for(self, data: bytes, after: list[int] | None = None) -> list[int]:
        """Model tokens spelling `data` from the current state (or from the state after the
        tokens `after`, which the matcher accepts), each checked by the matcher."""
        tokens = split_into_tokens(self._matcher, data, self._tokens.spelling, after)
        if tokens is None:
            raise RuntimeError(f"no token sequence spells the completion {data!r}")
        return tokens

    def _is_tight(self) -> bool:
        return self._remaining is not None and not self._fits(
            self._closing_for_state(), self._remaining - 1
        )

    def _fits(self, closing: _Closing, budget: int, after: list[int] | None = None) -> bool:
        """Whether `closing` (a close from this state, or from the state after the tokens
        `after`) is at most `budget` tokens; spelled only when its byte count leaves doubt."""
        if len(closing.data) <= budget:
            return True
        if after is None:
            return len(self._spelled(closing)) <= budget
        if closing.tokens is None:
            closing.tokens = self.tokens_for(closing.data, after=after)
        return len(closing.tokens) <= budget

    def _spelled(self, closing: _Closing) -> list[int]:
        """The tokens of `closing`, a close from the current state."""
        if closing.tokens is None:
            closing.tokens = self.tokens_for(closing.data)
        return closing.tokens

    def _leads(self, closing: _Closing, token_id: int) -> bool:
        """Whether `token_id` is an ordinary token whose bytes start `closing`: then the rest
        of the close completes after it (the byte matcher accepted the whole close)."""
        data = (
            self._tokens.token_bytes[token_id]
            if 0 <= token_id < len(self._tokens.token_bytes)
            else b""
        )
        return bool(data) and closing.data.startswith(data)

    def _advance(self, token_id: int) -> bool:
        if not self._in_vocabulary(token_id):
            return False
        if self._matcher.try_consume_tokens([token_id]) != 1:
            if self._matcher.is_error():
                # A resource limit (lexer states, fuel), not a rejected token: the output can
                # no longer be guaranteed, so the request must fail rather than go on.
                raise RuntimeError(f"grammar matcher failed: {self._matcher.get_error()[:200]}")
            return False
        eos = token_id in self._tokens.eos_token_ids
        self._track.advance(b"" if eos else self._tokens.token_bytes[token_id], eos)
        self._token_log.append(token_id)
        if self._remaining is not None:
            self._remaining -= 1
        self._closing = self._hint = self._memo = None
        self._known, self._looked_up, self._checked = None, False, None
        return True

    def _closing_for_state(self) -> _Closing:
        if self._closing is None:
            data = self._track.find(self._hint)
            self._closing = None if data is None else _Closing(data)
        if self._closing is None:
            raise RuntimeError("budget-aware closing found no completion from this state")
        return self._closing

    def _closing_after(self, token_id: int, hint: bytes) -> _Closing | None:
        """The close `steer` would find from the state after `token_id` (which the grammar
        allows), without accepting it (closing.ByteTrack.after)."""
        if token_id in self._tokens.eos_token_ids:
            return _Closing(b"", [])  # after EOS the grammar is complete
        found = self._track.after(self._tokens.token_bytes[token_id], hint)
        return None if found is None else _Closing(found)
