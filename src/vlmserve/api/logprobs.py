"""Engine logprobs (one {token_id: Logprob} per generated token) -> OpenAI's two shapes."""

from __future__ import annotations

from collections.abc import Callable

from vlmserve.api.responses import CompletionLogprobs, TokenLogprob, TopLogprob
from vlmserve.types import Logprob

Decode = Callable[[list[int]], str]


def _top(entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    ranked = [(tid, lp) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= k]
    return sorted(ranked, key=lambda item: item[1].rank or 0)


def _item(token_id: int, lp: Logprob, decode: Decode) -> TopLogprob:
    text = decode([token_id])
    return TopLogprob(token=text, logprob=lp.logprob, bytes=list(text.encode()))


def chat_logprobs(
    token_ids: list[int], entries: list[dict[int, Logprob]], k: int, decode: Decode
) -> list[TokenLogprob]:
    out = []
    for token_id, entry in zip(token_ids, entries, strict=True):
        chosen = _item(token_id, entry[token_id], decode)
        out.append(
            TokenLogprob(
                **chosen.model_dump(),
                top_logprobs=[_item(tid, lp, decode) for tid, lp in _top(entry, k)],
            )
        )
    return out


def completion_logprobs(
    token_ids: list[int],
    entries: list[dict[int, Logprob]],
    k: int,
    decode: Decode,
    text_offset: int = 0,
) -> CompletionLogprobs:
    """OpenAI's legacy shape. `top_logprobs` always holds the sampled token besides the top
    `k` (so up to k + 1 entries, and the sampled token alone for `logprobs: 0`), as OpenAI
    and vLLM answer."""
    result = CompletionLogprobs()
    for token_id, entry in zip(token_ids, entries, strict=True):
        text = decode([token_id])
        top = dict(_top(entry, k))
        top.setdefault(token_id, entry[token_id])
        ranked = sorted(top.items(), key=lambda item: item[1].rank or 0)
        result.tokens.append(text)
        result.token_logprobs.append(entry[token_id].logprob)
        result.top_logprobs.append({decode([tid]): lp.logprob for tid, lp in ranked})
        result.text_offset.append(text_offset)
        text_offset += len(text)
    return result


def echo_logprobs(
    prompt_ids: list[int], entries: list[dict[int, Logprob] | None], k: int, decode: Decode
) -> CompletionLogprobs:
    """An echoed prompt's logprobs, in the shape of the generated ones; the first token has
    no logprob (nothing predicts it)."""
    if not prompt_ids:
        return CompletionLogprobs()
    first = decode(prompt_ids[:1])
    head = CompletionLogprobs(
        tokens=[first], token_logprobs=[None], top_logprobs=[None], text_offset=[0]
    )
    scored = [e for e in entries[1:] if e is not None]
    return head + completion_logprobs(prompt_ids[1:], scored, k, decode, len(first))
