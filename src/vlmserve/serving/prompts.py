"""Request content -> the engine's typed `Prompt`, with the checks that need the model's
facts: a chat template to render, reserved tokens user text may not contain, and how many
images and videos one request may carry (counted before anything is fetched).

Text that could never fit the context is refused before the template is rendered; a long
template is rendered on the work pool, off the event loop (serving/work_pool.py)."""

from __future__ import annotations

from typing import Any

from vlmserve.engine.inputs import MAX_CHARS_PER_TOKEN
from vlmserve.multimodal.prompt import ChatPrompt, PromptError, build_chat_prompt
from vlmserve.registry import ModelInfo
from vlmserve.serving.errors import ServingError
from vlmserve.serving.media import MediaLoader
from vlmserve.serving.work_pool import WorkPool
from vlmserve.types import Prompt

# Longer text is rendered on the work pool (rendering costs ~25 ns a character, plus a
# constant per part); shorter is cheaper than the thread hop.
OFFLOAD_CHARS = 64 * 1024


def text_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of text in `messages`: a lower bound of the rendered prompt's length."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    total += len(text)
    return total


async def chat_prompt(
    model: ModelInfo,
    messages: list[dict[str, Any]],
    media: MediaLoader,
    add_generation_prompt: bool = True,
    work: WorkPool | None = None,
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
    chars = text_chars(messages)
    _check_length(model, chars, "the messages hold", "characters of text", "messages")
    args = (messages, template, model.reserved_tokens, add_generation_prompt, tools)
    try:
        chat: ChatPrompt = (
            await work.run(build_chat_prompt, *args)
            if work is not None and chars > OFFLOAD_CHARS
            else build_chat_prompt(*args)
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
    # Before the reserved-token scan: scanning 16 MiB costs the event loop half a second.
    _check_length(model, len(prompt), "the prompt is", "characters", "prompt")
    if any(token in prompt for token in model.reserved_tokens):
        # Raw prompts may not forge image placeholders: no image data can come with them.
        raise ServingError(400, "the prompt contains a reserved special token", "prompt")
    return Prompt(text=prompt)


def _check_length(model: ModelInfo, chars: int, what: str, unit: str, param: str) -> None:
    """Text that cannot fit the context whatever its tokens, refused from its length alone
    (the bound the engine applies before tokenizing, engine/inputs.py)."""
    limit = model.max_model_len * MAX_CHARS_PER_TOKEN
    if chars > limit:
        raise ServingError(
            400,
            f"{what} {chars} {unit}; with a context of {model.max_model_len} tokens at most "
            f"{limit} are accepted ({MAX_CHARS_PER_TOKEN} per token), so it cannot fit",
            param,
        )
