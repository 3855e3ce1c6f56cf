"""OpenAI-style chat messages -> prompt text through the model's chat template.

Text and media parts keep exactly the order they were given in, across all messages: the
template sees each media part as `{"type": "image"}` / `{"type": "video"}` at its place and
emits the model's vision placeholder there; the media themselves are returned in the same
order. User text may not contain the model's reserved tokens (a user could otherwise forge
image placeholders or turn boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant", "tool", "developer")
TEXT_PARTS = ("text",)
IMAGE_PARTS = ("image_url", "image", "image_pil")
VIDEO_PARTS = ("video_url", "video")


class PromptError(ValueError):
    """Invalid chat input; `param` names the offending field (e.g. `messages[1].content[0]`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class ChatMedia:
    modality: str  # "image" | "video"
    source: Any  # a URL string, a PIL image, or None (served from the cache by uuid)
    uuid: str | None
    param: str  # where it came from in the request, for error messages


@dataclass
class ChatPrompt:
    text: str
    media: list[ChatMedia]


_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)


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
    return ChatMedia(modality, url, uuid, param)


def normalize_messages(
    messages: list[dict[str, Any]], reserved: frozenset[str]
) -> tuple[list[dict[str, Any]], list[ChatMedia]]:
    if not isinstance(messages, list) or not messages:
        raise PromptError("messages must be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    media: list[ChatMedia] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise PromptError(f"{param} must be an object", param)
        role = message.get("role")
        if role not in ROLES:
            raise PromptError(
                f"{param}.role must be one of {', '.join(ROLES)}; got {role!r}", f"{param}.role"
            )
        content = message.get("content")
        if isinstance(content, str):
            out.append(
                {"role": role, "content": _check_text(content, f"{param}.content", reserved)}
            )
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
                parts.append(
                    {
                        "type": "text",
                        "text": _check_text(part.get("text"), f"{pparam}.text", reserved),
                    }
                )
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
        out.append({"role": role, "content": parts})
    return out, media


def build_chat_prompt(
    messages: list[dict[str, Any]],
    template: str,
    reserved: frozenset[str],
    add_generation_prompt: bool = True,
) -> ChatPrompt:
    normalized, media = normalize_messages(messages, reserved)
    try:
        text = _ENV.from_string(template).render(
            messages=normalized, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as exc:
        raise PromptError(f"the chat template failed on these messages: {exc}", "messages") from exc
    return ChatPrompt(text, media)
