"""Small pieces both generation endpoints share: the model check and token usage."""

from __future__ import annotations

from vlmserve.api.errors import APIError
from vlmserve.api.responses import PromptTokensDetails, Usage
from vlmserve.api.state import ServingState
from vlmserve.types import RequestOutput


def check_model(state: ServingState, model: str) -> None:
    if model != state.model.name:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {state.model.name!r}",
            "model",
            code="model_not_found",
        )


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
