"""Request content -> the engine's typed `Prompt`, with the checks that need the model's
facts: a chat template to render, reserved tokens user text may not contain, and how many
images and videos one request may carry (counted before anything is fetched)."""

from __future__ import annotations

from typing import Any

from vlmserve.multimodal.prompt import PromptError, build_chat_prompt
from vlmserve.registry import ModelInfo
from vlmserve.serving.errors import ServingError
from vlmserve.serving.media import MediaLoader
from vlmserve.types import Prompt


async def chat_prompt(
    model: ModelInfo,
    messages: list[dict[str, Any]],
    media: MediaLoader,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> Prompt:
    """OpenAI-style `messages` (plain dicts) through the model's chat template, media fetched
    and decoded in order; `tools` (OpenAI-style definitions) for its tools section."""
    template = model.chat_template
    if template is None:
        raise ServingError(
            400,
            "this model has no chat template; start the server with --chat-template",
            "messages",
        )
    try:
        chat = build_chat_prompt(
            messages, template, model.reserved_tokens, add_generation_prompt, tools
        )
    except PromptError as exc:
        raise ServingError(400, str(exc), exc.param) from exc
    # Counted before anything is fetched: a request over the limit costs no bandwidth.
    for modality in ("image", "video"):
        count = sum(1 for ref in chat.media if ref.modality == modality)
        limit = model.media_limits.get(modality, 0)
        if count > limit:
            raise ServingError(
                400,
                f"{count} {modality}s in one request; this server allows at most {limit} "
                "(--limit-mm-per-prompt)",
                "messages",
            )
    return await media.prompt(chat, model.media_policy)


def completion_prompt(model: ModelInfo, prompt: str | list[int]) -> Prompt:
    """A raw prompt: text, or token ids."""
    if isinstance(prompt, list):
        return Prompt(token_ids=list(prompt))
    if any(token in prompt for token in model.reserved_tokens):
        # Raw prompts may not forge image placeholders: no image data can come with them.
        raise ServingError(400, "the prompt contains a reserved special token", "prompt")
    return Prompt(text=prompt)
