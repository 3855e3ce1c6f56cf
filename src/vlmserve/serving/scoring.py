"""Scoring texts after a prompt: each continuation is tokenized with the model's tokenizer and
the engine's teacher-forced pass (`AsyncEngine.score`) gives its log-probability from raw
logits, whatever sampling parameters the caller uses elsewhere. The same pass gives a
prompt's own logprobs (`prompt_logprobs`: `echo` with `logprobs` on /v1/completions).
Refusals and failures are `ServingError`s, like every other serving entry point."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from vlmserve.registry import ModelHandle
from vlmserve.serving.errors import ServingError, engine_error
from vlmserve.types import Logprob, Prompt, RequestOutput


@dataclass
class ScoreRequest:
    prompt: Prompt  # e.g. from `Serving.chat_prompt`: template applied, media loaded
    continuations: list[str]  # scored after the prompt; tokenized on their own
    request_id: str = field(default_factory=lambda: f"score-{uuid.uuid4().hex}")


async def score_continuations(handle: ModelHandle, request: ScoreRequest) -> RequestOutput:
    """One completion per continuation, in order: `token_ids` (the continuation's tokens),
    `logprobs` (each token's), `cumulative_logprob` (the continuation's log-probability)."""
    tokens = [handle.info.encode(text) for text in request.continuations]
    if not tokens:
        raise ServingError(400, "give at least one continuation to score", "continuations")
    for i, ids in enumerate(tokens):
        if not ids:
            raise ServingError(400, f"continuations[{i}] is empty", f"continuations[{i}]")
    return await _score(handle, request.prompt, tokens, request.request_id)


async def prompt_logprobs(
    handle: ModelHandle,
    token_ids: list[int],
    top_logprobs: int,
    request_id: str,
    cache_salt: str | None = None,
) -> list[dict[int, Logprob] | None]:
    """vLLM's prompt logprobs: each prompt token's logprob (and rank, and the
    `top_logprobs` most likely tokens there) given the tokens before it; the first token
    has none. The prompt's tail is scored after its first token, teacher-forced."""
    if len(token_ids) < 2:
        return [None] * len(token_ids)
    first = Prompt(token_ids=token_ids[:1], cache_salt=cache_salt)
    output = await _score(handle, first, [token_ids[1:]], request_id, top_logprobs)
    (scored,) = output.outputs
    assert scored.logprobs is not None
    return [None, *scored.logprobs]


async def _score(
    handle: ModelHandle,
    prompt: Prompt,
    tokens: list[list[int]],
    request_id: str,
    top_logprobs: int = 0,
) -> RequestOutput:
    try:
        output = await handle.engine.score(prompt, tokens, request_id, top_logprobs)
    except Exception as exc:
        mapped = engine_error(exc)
        if mapped is None:
            # The engine's step failed while this request was in it: a server fault.
            mapped = ServingError(500, f"the engine failed on this request: {exc}")
        raise mapped from exc
    if output.error is not None or any(c.finish_reason != "stop" for c in output.outputs):
        raise ServingError(500, f"the engine failed on this request: {output.error or 'unknown'}")
    return output
