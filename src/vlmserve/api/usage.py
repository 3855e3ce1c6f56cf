"""Token usage, as both generation endpoints report it."""

from __future__ import annotations

from vlmserve.api.responses import PromptTokensDetails, Usage
from vlmserve.types import RequestOutput


def usage(output: RequestOutput) -> Usage:
    prompt = len(output.prompt_token_ids)
    completion = sum(len(c.token_ids) for c in output.outputs)
    cached = output.metrics.num_cached_tokens if output.metrics is not None else 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )
