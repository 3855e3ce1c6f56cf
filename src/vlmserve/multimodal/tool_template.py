"""Tools in the chat prompt: the built-in fallback template, the test for whether a model's
template renders tools itself, and the checks on tool definitions and assistant tool calls.

Qwen2-VL's and Qwen2.5-VL's own templates have no tools section (Qwen2.5's text models' do):
for requests with tools, or with tool calls and results in the history, such a template is
replaced by `TOOL_CHAT_TEMPLATE`. It writes the Hermes format Qwen2/2.5 were trained on
(tool signatures in `<tools>` in the system turn, calls as `<tool_call>` JSON, results as
`<tool_response>` in a user turn) and Qwen2-VL's vision placeholders. `--chat-template`
replaces the model's template; the same rule applies to it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jinja2
from jinja2 import meta

from vlmserve.multimodal.prompt_errors import PromptError

# Written like transformers' templates: every tag trims the whitespace around it, so the
# layout below is for reading; output text comes only from {{ }} expressions.
_CONTENT = """
{%- if message.content is string %}{{- message.content }}
{%- else %}{%- for part in message.content %}
    {%- if part.type == 'image' %}
        {%- set counts.image = counts.image + 1 %}
        {%- if add_vision_id %}{{- 'Picture ' ~ counts.image ~ ': ' }}{%- endif %}
        {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
    {%- elif part.type == 'video' %}
        {%- set counts.video = counts.video + 1 %}
        {%- if add_vision_id %}{{- 'Video ' ~ counts.video ~ ': ' }}{%- endif %}
        {{- '<|vision_start|><|video_pad|><|vision_end|>' }}
    {%- elif part.type == 'text' %}{{- part.text }}
    {%- endif %}
{%- endfor %}{%- endif %}
"""

TOOL_CHAT_TEMPLATE = (
    """
{%- set counts = namespace(image=0, video=0) %}
{%- set system_first = messages[0].role == 'system' %}
{%- if tools or not system_first %}
    {{- '<|im_start|>system\n' }}
    {%- if system_first %}{%- set message = messages[0] %}"""
    + _CONTENT
    + """
    {%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
    {%- if tools %}
        {{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.'
            '\n\nYou are provided with function signatures within <tools></tools> XML tags:'
            '\n<tools>' }}
        {%- for tool in tools %}{{- '\n' ~ (tool | tojson) }}{%- endfor %}
        {{- '\n</tools>\n\nFor each function call, return a json object with function name '
            'and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n'
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' }}
    {%- endif %}
    {{- '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if loop.first and system_first and tools %}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}{{- '\n' }}"""
    + _CONTENT
    + """{%- endif %}
        {%- for call in message.tool_calls or [] %}
            {{- '\n<tool_call>\n{"name": ' ~ (call.function.name | tojson) ~ ', "arguments": '
                ~ (call.function.arguments | tojson) ~ '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' }}"""
    + _CONTENT
    + """{{- '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- else %}
        {{- '<|im_start|>' ~ message.role ~ '\n' }}"""
    + _CONTENT
    + """{{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""
)


@functools.lru_cache(maxsize=16)
def renders_tools(template: str) -> bool:
    """Whether `template` reads a `tools` variable (then it renders tool signatures itself)."""
    try:
        return "tools" in meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateSyntaxError:
        return False  # rendering reports the syntax error, with the request's context


def uses_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
    """Tools offered, or tool calls or results in the history."""
    return bool(tools) or any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages
    )


def tojson(value: Any, indent: int | None = None) -> str:
    """JSON as transformers' chat templates write it (Jinja's own filter escapes <, > and &
    for HTML, which a model never saw in training)."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def check_reserved(value: Any, param: str, reserved: frozenset[str]) -> None:
    """No reserved token in any string (key or value) of a JSON value the template renders.
    Rendered as JSON, strings are quoted, so two of them never join into a token."""
    for text in _strings(value):
        for token in reserved:
            if token in text:
                raise PromptError(
                    f"{param} contains the reserved token {token!r}, which only the server may "
                    "place",
                    param,
                )


def tool_fields(
    message: dict[str, Any], role: str, param: str, reserved: frozenset[str]
) -> dict[str, Any]:
    """The tool keys of one message, checked: `tool_calls` on assistant messages,
    `tool_call_id` on tool results."""
    fields: dict[str, Any] = {}
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise PromptError(
                f"{param}.tool_calls: only assistant messages carry tool calls", param
            )
        fields["tool_calls"] = normalize_tool_calls(calls, f"{param}.tool_calls", reserved)
    call_id = message.get("tool_call_id")
    if call_id is not None:
        if role != "tool" or not isinstance(call_id, str):
            raise PromptError(
                f"{param}.tool_call_id must be a string, on tool messages only",
                f"{param}.tool_call_id",
            )
        check_reserved(call_id, f"{param}.tool_call_id", reserved)
        fields["tool_call_id"] = call_id
    return fields


def normalize_tool_calls(calls: Any, param: str, reserved: frozenset[str]) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` (OpenAI's shape, arguments as a JSON string or an
    object) -> what templates expect: arguments as an object."""
    if not isinstance(calls, list):
        raise PromptError(f"{param} must be a list", param)
    out = []
    for j, call in enumerate(calls):
        where = f"{param}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise PromptError(f"{where} needs a 'function' with a 'name'", f"{where}.function")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise PromptError(
                    f"{where}.function.arguments is not valid JSON: {exc}",
                    f"{where}.function.arguments",
                ) from exc
        if not isinstance(arguments, dict):
            raise PromptError(
                f"{where}.function.arguments must be a JSON object", f"{where}.function.arguments"
            )
        normalized = {
            "id": str(call.get("id", "")),
            "type": "function",
            "function": {"name": function["name"], "arguments": arguments},
        }
        check_reserved(normalized, where, reserved)
        out.append(normalized)
    return out
