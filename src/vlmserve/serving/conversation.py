"""Responses API input items -> chat messages for the chat template, remembering where each
message came from so that a refusal names the field the client sent.

| item | message |
|---|---|
| `instructions` | a system message first |
| `message` (`input_text`, `input_image`, `output_text` parts) | a message of its role (`text` / `image_url` parts) |
| `function_call` (consecutive ones together) | an assistant message's `tool_calls` (joined to the assistant message just before them) |
| `function_call_output` | a `tool` message |

Items are plain dicts (as the HTTP layer validated them, or as they were stored).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlmserve.serving.errors import ServingError


@dataclass
class _Origin:
    param: str  # the item the message came from, e.g. input[3]
    kind: str  # "instructions", "message", "tool"
    calls: list[str] = field(default_factory=list)  # per tool call: its function_call item


@dataclass
class Conversation:
    messages: list[dict[str, Any]] = field(default_factory=list)
    origins: list[_Origin] = field(default_factory=list)

    def name_fields(self, exc: ServingError) -> None:
        """Rename `messages[i]...` in `exc`'s param and message after the item it came from."""
        param = exc.param or ""
        match = re.match(r"messages\[(\d+)\]", param)
        if match is None or int(match.group(1)) >= len(self.origins):
            return
        origin = self.origins[int(match.group(1))]
        mapped = _item_param(origin, param[match.end() :])
        exc.message = exc.message.replace(param, mapped).replace(match.group(0), origin.param)
        exc.param = mapped

    def add(self, message: dict[str, Any], origin: _Origin) -> None:
        self.messages.append(message)
        self.origins.append(origin)


def _item_param(origin: _Origin, rest: str) -> str:
    if origin.kind == "instructions":
        return origin.param
    call = re.match(r"\.tool_calls\[(\d+)\](?:\.function)?(.*)", rest)
    if call is not None and int(call.group(1)) < len(origin.calls):
        return origin.calls[int(call.group(1))] + call.group(2)
    if origin.kind == "tool":
        rest = rest.replace(".content", ".output", 1).replace(".tool_call_id", ".call_id", 1)
    # An image part's URL is `image_url` itself in this API, its detail a sibling.
    rest = re.sub(r"\.image_url\.url$", ".image_url", rest)
    return origin.param + re.sub(r"\.image_url\.detail$", ".detail", rest)


def _content(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "input_image":
            image = {"url": part["image_url"]}
            if part.get("detail") is not None:  # low: a smaller pixel budget, as on chat
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:  # input_text, output_text
            parts.append({"type": "text", "text": part["text"]})
    return parts


def to_messages(
    items: list[dict[str, Any]], instructions: str | None, item_param: Callable[[int], str]
) -> Conversation:
    """`item_param(i)`: how the request names item `i` (e.g. `input[3]`)."""
    conversation = Conversation()
    if instructions is not None:
        conversation.add(
            {"role": "system", "content": instructions}, _Origin("instructions", "instructions")
        )
    for index, item in enumerate(items):
        param = item_param(index)
        kind = item.get("type", "message")
        if kind == "message":
            message = {"role": item["role"], "content": _content(item["content"])}
            conversation.add(message, _Origin(param, "message"))
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = conversation.messages[-1] if conversation.messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                conversation.origins[-1].calls.append(param)
            else:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                conversation.add(message, _Origin(param, "message", [param]))
        elif kind == "function_call_output":
            output = item["output"]
            content = output if isinstance(output, str) else _content(output)
            message = {"role": "tool", "tool_call_id": item["call_id"], "content": content}
            conversation.add(message, _Origin(param, "tool"))
        else:
            raise ServingError(400, f"{param}: unsupported item type {kind!r}", f"{param}.type")
    return conversation
