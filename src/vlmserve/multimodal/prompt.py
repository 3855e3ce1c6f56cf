"""OpenAI-style chat messages -> prompt text through the model's chat template.

Text and media parts keep exactly the order they were given in, across all messages: the
template sees each media part as `{"type": "image"}` / `{"type": "video"}` at its place and
emits the model's vision placeholder there; the media themselves are returned in the same
order. Caller text may not contain the model's reserved tokens, alone or joined with its
neighbours in the rendered prompt (reserved.py): it could otherwise forge image placeholders
or turn boundaries.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from vlmserve.multimodal.processor import detail_max_pixels
from vlmserve.multimodal.prompt_errors import PromptError
from vlmserve.multimodal.reserved import ForgedToken, TextSlot, check_rendered
from vlmserve.multimodal.tool_template import (
    TOOL_CHAT_TEMPLATE,
    check_reserved,
    renders_tools,
    tojson,
    tool_fields,
    uses_tools,
)

ROLES = ("system", "user", "assistant", "tool", "developer")
TEXT_PARTS = ("text",)
IMAGE_PARTS = ("image_url", "image", "image_pil")
VIDEO_PARTS = ("video_url", "video")


@dataclass
class ChatMedia:
    modality: str  # "image" | "video"
    source: Any  # a URL string, a PIL image, or None (served from the cache by uuid)
    uuid: str | None
    param: str  # where it came from in the request, for error messages
    max_pixels: int | None = None  # an image's `detail: "low"` budget (None: the model's)


@dataclass
class ChatPrompt:
    text: str
    media: list[ChatMedia]


_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
_ENV.filters["tojson"] = tojson


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Template:
    # Compiling costs milliseconds; a server renders the same template for every request.
    return _ENV.from_string(template)


def _check_text(text: Any, param: str, reserved: frozenset[str]) -> str:
    if not isinstance(text, str):
        raise PromptError(f"{param} must be a string", param)
    for token in reserved:
        if token in text:
            raise PromptError(
                f"{param} contains the reserved token {token!r}, which only the server may place",
                param,
            )
    return text


def _media_part(part: dict[str, Any], kind: str, param: str) -> ChatMedia:
    modality = "image" if kind in IMAGE_PARTS else "video"
    if kind in ("image", "image_pil", "video") and not isinstance(part.get(kind), (str, dict)):
        return ChatMedia(modality, part.get(kind), part.get("uuid"), param)
    body = part.get(kind)
    if isinstance(body, str):
        return ChatMedia(modality, body, part.get("uuid"), param)
    if not isinstance(body, dict):
        raise PromptError(f"{param}.{kind} must be an object with a 'url'", f"{param}.{kind}")
    url = body.get("url")
    uuid = body.get("uuid", part.get("uuid"))
    if url is None and uuid is None:
        raise PromptError(f"{param}.{kind} needs a 'url' or a 'uuid'", f"{param}.{kind}.url")
    if url is not None and not isinstance(url, str):
        raise PromptError(f"{param}.{kind}.url must be a string", f"{param}.{kind}.url")
    try:
        max_pixels = detail_max_pixels(body.get("detail")) if modality == "image" else None
    except ValueError as exc:
        raise PromptError(f"{param}.{kind}.{exc}", f"{param}.{kind}.detail") from exc
    return ChatMedia(modality, url, uuid, param, max_pixels)


@dataclass
class NormalizedChat:
    messages: list[dict[str, Any]]  # what the template sees
    media: list[ChatMedia]
    texts: list[TextSlot]  # every caller text, in the order the template is given them


def normalize_messages(messages: list[dict[str, Any]], reserved: frozenset[str]) -> NormalizedChat:
    if not isinstance(messages, list) or not messages:
        raise PromptError("messages must be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    media: list[ChatMedia] = []
    texts: list[TextSlot] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise PromptError(f"{param} must be an object", param)
        role = message.get("role")
        if role not in ROLES:
            raise PromptError(
                f"{param}.role must be one of {', '.join(ROLES)}; got {role!r}", f"{param}.role"
            )
        tool = tool_fields(message, role, param, reserved)
        content = message.get("content")
        if content is None and tool.get("tool_calls"):
            content = ""  # an assistant turn that only calls tools
        if isinstance(content, str):
            text = _check_text(content, f"{param}.content", reserved)
            texts.append(TextSlot(f"{param}.content", text))
            out.append({"role": role, "content": text, **tool})
            continue
        if not isinstance(content, list):
            raise PromptError(
                f"{param}.content must be a string or a list of parts", f"{param}.content"
            )
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            pparam = f"{param}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in TEXT_PARTS:
                text = _check_text(part.get("text"), f"{pparam}.text", reserved)
                texts.append(TextSlot(f"{pparam}.text", text))
                parts.append({"type": "text", "text": text})
            elif kind in IMAGE_PARTS or kind in VIDEO_PARTS:
                if role != "user":
                    raise PromptError(
                        f"{pparam}: media parts are only allowed in user messages", pparam
                    )
                ref = _media_part(part, kind, pparam)
                media.append(ref)
                parts.append({"type": ref.modality})
            elif kind == "input_audio":
                raise PromptError(
                    f"{pparam}: audio input is not supported by this model", f"{pparam}.type"
                )
            else:
                raise PromptError(
                    f"{pparam}.type {kind!r} is not a known content part type", f"{pparam}.type"
                )
        out.append({"role": role, "content": parts, **tool})
    return NormalizedChat(out, media, texts)


def _with_texts(messages: list[dict[str, Any]], text_of: Callable[[int], str]) -> list[Any]:
    """`messages` with the i-th caller text (in `NormalizedChat.texts` order) -> text_of(i)."""
    counter = itertools.count()
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = text_of(next(counter))
        else:
            content = [
                {"type": "text", "text": text_of(next(counter))} if p["type"] == "text" else p
                for p in content
            ]
        out.append({**message, "content": content})
    return out


def build_chat_prompt(
    messages: list[dict[str, Any]],
    template: str,
    reserved: frozenset[str],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> ChatPrompt:
    """Render `messages` through `template`. `reserved`: every token text only the template
    may place (the tokenizer's added tokens). `tools`: OpenAI-style tool definitions for the
    template's tools section; a template without one is replaced by the built-in tool
    template (tool_template.py) whenever tools are offered or the history holds tool calls
    or results. Tool definitions and calls are JSON in the prompt: each of their strings is
    checked for reserved tokens on its own (quoted, two never join)."""
    chat = normalize_messages(messages, reserved)
    if tools:
        check_reserved(tools, "tools", reserved)
    if uses_tools(messages, tools) and not renders_tools(template):
        template = TOOL_CHAT_TEMPLATE
    try:
        compiled = _compile(template)

        def render(text_of: Callable[[int], str]) -> str:
            return compiled.render(
                messages=_with_texts(chat.messages, text_of),
                add_generation_prompt=add_generation_prompt,
                tools=tools or None,
            )

        text = compiled.render(
            messages=chat.messages, add_generation_prompt=add_generation_prompt, tools=tools or None
        )
        check_rendered(render, text, chat.texts, reserved)
    except TemplateError as exc:
        raise PromptError(f"the chat template failed on these messages: {exc}", "messages") from exc
    except ForgedToken as exc:
        raise PromptError(str(exc), exc.params[0] if exc.params else "messages") from exc
    return ChatPrompt(text, chat.media)
