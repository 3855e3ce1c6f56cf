"""Tools in the chat prompt: the built-in template writes Qwen2.5's Hermes format with vision
placeholders, a template with its own tools section is used as it is, and tool text is held
to the same reserved-token rule as message text."""

from __future__ import annotations

from typing import Any

import pytest

from vlmserve.models.tiny_tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS
from vlmserve.multimodal.prompt import PromptError, build_chat_prompt
from vlmserve.multimodal.tool_template import TOOL_CHAT_TEMPLATE, renders_tools

RESERVED = frozenset(SPECIAL_TOKENS)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather <now> & later",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}},
            {"type": "text", "text": "Weather here?"},
        ],
    },
    {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "dry"}]},
    {"role": "assistant", "content": "Sunny."},
]

EXPECTED = (
    "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist "
    "with the user query.\n\nYou are provided with function signatures within <tools></tools> "
    'XML tags:\n<tools>\n{"type": "function", "function": {"name": "get_weather", '
    '"description": "Weather <now> & later", "parameters": {"type": "object", "properties": '
    '{"city": {"type": "string"}}}}}\n</tools>\n\nFor each function call, return a json object '
    "with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Weather here?<|im_end|>\n"
    '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
    '"Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
    '"Paris"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\ndry\n"
    "</tool_response><|im_end|>\n<|im_start|>assistant\nSunny.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_the_builtin_template_writes_the_hermes_format() -> None:
    assert not renders_tools(CHAT_TEMPLATE) and renders_tools(TOOL_CHAT_TEMPLATE)
    prompt = build_chat_prompt(HISTORY, CHAT_TEMPLATE, RESERVED, tools=TOOLS)
    assert prompt.text == EXPECTED
    assert [m.param for m in prompt.media] == ["messages[1].content[0]"]


def test_default_system_turn_and_plain_chats() -> None:
    user = [{"role": "user", "content": "Hi"}]
    with_tools = build_chat_prompt(user, CHAT_TEMPLATE, RESERVED, tools=TOOLS).text
    assert with_tools.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools")
    assert with_tools.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # Without tools the model's own template renders, as before.
    plain = build_chat_prompt(user, CHAT_TEMPLATE, RESERVED).text
    assert plain == build_chat_prompt(user, TOOL_CHAT_TEMPLATE, RESERVED).text


def test_a_template_with_a_tools_section_is_used_as_it_is() -> None:
    own = (
        "{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
        "{% for c in m.tool_calls or [] %}({{ c.function.arguments.city }}){% endfor %}"
        "{% endfor %}"
    )
    assert renders_tools(own)
    text = build_chat_prompt(HISTORY[2:4], own, RESERVED, tools=TOOLS).text
    assert text == "[get_weather]<assistant>(Paris)(Paris)<tool>sunny"


@pytest.mark.parametrize(
    ("messages", "tools", "param"),
    [
        (HISTORY[:1], [{**TOOLS[0], "function": {"name": "x<|im_end|>"}}], "tools"),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {**CALL, "function": {"name": "f", "arguments": '{"a": "<|im_start|>"}'}}
                    ],
                }
            ],
            None,
            "messages[0].tool_calls[0]",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{nope"}}],
                }
            ],
            None,
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}],
                }
            ],
            None,
            "messages[0].tool_calls[0].function.arguments",
        ),
        ([{"role": "user", "content": "x", "tool_calls": [CALL]}], None, "messages[0]"),
        ([{"role": "tool", "content": "x", "tool_call_id": 5}], None, "messages[0].tool_call_id"),
    ],
)
def test_bad_tool_input_is_refused_by_field(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, param: str
) -> None:
    with pytest.raises(PromptError) as info:
        build_chat_prompt(messages, CHAT_TEMPLATE, RESERVED, tools=tools)
    assert info.value.param == param, info.value
