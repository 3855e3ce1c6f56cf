"""Responses API items as chat messages, and refusals named after the item they came from."""

from __future__ import annotations

from typing import Any

from vlmserve.serving import ServingError
from vlmserve.serving.conversation import to_messages

CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
ITEMS: list[dict[str, Any]] = [
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Look:"},
            {"type": "input_image", "image_url": "data:,x"},
        ],
    },
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sure."}]},
    CALL,
    {**CALL, "call_id": "c2"},
    {"type": "function_call_output", "call_id": "c1", "output": "1"},
    {
        "type": "function_call_output",
        "call_id": "c2",
        "output": [{"type": "input_text", "text": "2"}],
    },
    CALL,
]


def test_items_become_messages() -> None:
    conversation = to_messages(ITEMS, "Be brief.", lambda i: f"input[{i}]")
    assert conversation.messages == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "data:,x"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Sure."}],
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "2"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ],
        },
    ]


def _mapped(param: str, message: str | None = None) -> ServingError:
    conversation = to_messages(ITEMS, "Be brief.", lambda i: f"input[{i}]")
    error = ServingError(400, message or f"{param}: bad", param)
    conversation.name_fields(error)
    return error


def test_refusals_name_the_item() -> None:
    assert _mapped("messages[0].content").param == "instructions"
    media = _mapped("messages[1].content[1]")
    assert media.param == "input[0].content[1]" and media.message == "input[0].content[1]: bad"
    assert _mapped("messages[1].content[1].image_url.url").param == "input[0].content[1].image_url"
    assert _mapped("messages[2].content[0].text").param == "input[1].content[0].text"
    assert _mapped("messages[2].tool_calls[1].function.arguments").param == "input[3].arguments"
    assert _mapped("messages[4].content").param == "input[5].output"
    assert _mapped("messages[3].tool_call_id").param == "input[4].call_id"
    assert _mapped("messages").param == "messages"  # not one message: left as it is
