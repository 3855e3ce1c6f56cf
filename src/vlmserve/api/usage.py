"""Token usage, as both generation endpoints report it: prompt tokens (image and video tokens
included), of which from the prefix cache and from media; generated tokens."""

from __future__ import annotations

from collections.abc import Sequence

from vlmserve.api.responses import PromptTokensDetails, Usage
from vlmserve.types import RequestOutput


def usage(outputs: RequestOutput | Sequence[RequestOutput]) -> Usage:
    """One request's usage; several (a completion with a list of prompts) are summed."""
    outputs = [outputs] if isinstance(outputs, RequestOutput) else outputs
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    cached = sum(o.metrics.num_cached_tokens for o in outputs if o.metrics is not None)
    videos = sum(o.num_media_tokens.get("video", 0) for o in outputs)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=cached,
            image_tokens=sum(o.num_media_tokens.get("image", 0) for o in outputs),
            video_tokens=videos if any("video" in o.num_media_tokens for o in outputs) else None,
        ),
    )
