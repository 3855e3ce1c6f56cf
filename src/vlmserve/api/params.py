"""Engine field names -> the request fields the client wrote.

The engine names what it was given: `multi_modal_data.image[0]`, `prompt_token_ids`,
`structured_outputs.json`. A chat client sent `messages[2].content[1]` and
`response_format.json_schema.schema`; an error's `param` must say that.
"""

from __future__ import annotations

import re

from vlmserve.api.protocol import ChatCompletionRequest, CompletionRequest
from vlmserve.api.sampling import client_param
from vlmserve.serving import ServingError

_MEDIA_ITEM = re.compile(r"multi_modal_data\.(image|video)\[(\d+)\]")
_MODALITY = {"image_url": "image", "video_url": "video"}


def _media_parts(body: ChatCompletionRequest, modality: str) -> list[str]:
    """Where each image (or video) of the request sits, in prompt order: the k-th one is
    the engine's `multi_modal_data.<modality>[k]`."""
    return [
        f"messages[{i}].content[{j}]"
        for i, message in enumerate(body.messages)
        if isinstance(message.content, list)
        for j, part in enumerate(message.content)
        if _MODALITY.get(part.type) == modality
    ]


def chat_param(body: ChatCompletionRequest, param: str | None) -> str | None:
    if param is None:
        return None
    item = _MEDIA_ITEM.fullmatch(param)
    if item is not None:
        parts = _media_parts(body, item.group(1))
        index = int(item.group(2))
        return parts[index] if index < len(parts) else "messages"
    if param.startswith(("multi_modal_data", "multi_modal_uuids", "prompt")):
        return "messages"  # the prompt is the rendered messages
    if param == "max_tokens" and body.max_tokens is None and body.max_completion_tokens:
        return "max_completion_tokens"
    return client_param(body, param)


def completion_param(body: CompletionRequest, param: str | None) -> str | None:
    if param is None:
        return None
    if param.startswith(("prompt_token_ids", "multi_modal_data", "multi_modal_uuids")):
        return "prompt"  # e.g. token ids with vision placeholders but no media
    return client_param(body, param)


def rename(error: ServingError, param: str | None) -> None:
    """Give `error` the client's field name; a message naming the engine's media item or
    token ids names the client's field instead (a media part's errors start with it)."""
    engine, error.param = error.param, param
    if engine is None or param is None or engine == param:
        return
    if _MEDIA_ITEM.fullmatch(engine) or engine == "prompt_token_ids":
        if engine in error.message:
            error.message = error.message.replace(engine, param)
        elif param.startswith("messages["):
            error.message = f"{param}: {error.message}"
