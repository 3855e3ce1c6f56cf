"""Tool calling on /v1/chat/completions: the request's `tools` / `tool_choice` /
`parallel_tool_calls` as the serving layer's `Tools`, and the calls read out of the output
as OpenAI's `message.tool_calls` or its streamed tool-call deltas."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from vlmserve.api.errors import APIError
from vlmserve.api.protocol import ChatCompletionRequest
from vlmserve.api.protocol_tools import NamedToolChoice, tool_mode
from vlmserve.api.responses import (
    ChatDelta,
    ChatMessageOut,
    FunctionCallDelta,
    FunctionCallOut,
    ToolCallDelta,
    ToolCallOut,
)
from vlmserve.serving import ServingError
from vlmserve.serving.tool_calls import (
    ArgumentsDelta,
    CallStarted,
    ContentDelta,
    ToolCallError,
    ToolCallStream,
    finish_reason,
    parse_output,
)
from vlmserve.serving.tools import Tools
from vlmserve.types import CompletionOutput, ToolFunction

logger = logging.getLogger(__name__)

NO_PARAMETERS = {"type": "object", "properties": {}}  # OpenAI: parameters left out


def offered_tools(
    choice: Any,
    *,
    named: str | None,
    functions: Sequence[ToolFunction],
    name_param: Callable[[int], str],
    choice_param: str,
    definitions: list[dict[str, Any]],
    parallel: bool | None,
) -> Tools | None:
    """The request's tools as `Tools`, the same checks for both APIs (they differ only in
    where fields live): None when none are offered (then `tool_choice` may only be
    none/auto), a 400 for two tools of one name or a `tool_choice` naming none of them."""
    if not functions:
        if choice is not None and choice not in ("none", "auto"):
            raise APIError(400, "tool_choice needs tools to choose from", "tool_choice")
        return None
    seen: set[str] = set()
    for index, fn in enumerate(functions):
        if fn.name in seen:
            raise APIError(400, f"two tools are named {fn.name!r}", name_param(index))
        seen.add(fn.name)
    if named is not None and named not in seen:
        raise APIError(400, f"tool_choice names {named!r}, which is not in tools", choice_param)
    return Tools(
        definitions=definitions,
        functions=tuple(functions),
        mode=tool_mode(choice),
        function=named,
        parallel=parallel is not False,
    )


def chat_tools(body: ChatCompletionRequest) -> Tools | None:
    offered = body.tools or []
    choice = body.tool_choice
    return offered_tools(
        choice,
        named=choice.function.name if isinstance(choice, NamedToolChoice) else None,
        functions=[
            ToolFunction(
                t.function.name, t.function.parameters or NO_PARAMETERS, bool(t.function.strict)
            )
            for t in offered
        ],
        name_param=lambda i: f"tools[{i}].function.name",
        choice_param="tool_choice.function.name",
        definitions=[tool.model_dump(exclude_none=True) for tool in offered],
        parallel=body.parallel_tool_calls,
    )


def name_tool_fields(tools: Tools, exc: ServingError) -> None:
    """A schema refusal named after the request's fields (`tools[i].function.parameters`)."""
    tools.name_fields(
        exc, lambda i: f"tools[{i}].function.parameters", "response_format.json_schema.schema"
    )


def _unreadable(exc: ToolCallError) -> ServingError:
    # The grammar guarantees the format; if it did not hold, that is our bug, not the client's.
    logger.error("tool calls do not parse: %s", exc)
    return ServingError(500, "the model's tool calls could not be read; this is a bug")


def message(tools: Tools, output: CompletionOutput) -> tuple[ChatMessageOut, str | None]:
    """The assistant message and finish reason of one finished choice."""
    try:
        parsed = parse_output(output.text, tools.names)
    except ToolCallError as exc:
        raise _unreadable(exc) from exc
    calls = [
        ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))
        for c in parsed.tool_calls
    ]
    reason = finish_reason(output.finish_reason, bool(calls))
    return ChatMessageOut(content=parsed.content, tool_calls=calls or None), reason


class ToolDeltas:
    """Per choice of a stream: the text so far -> a chunk's delta and finish reason."""

    def __init__(self, tools: Tools, n: int) -> None:
        self.streams = [ToolCallStream(tools.names) for _ in range(n)]

    def delta(self, output: CompletionOutput) -> tuple[ChatDelta, str | None]:
        stream = self.streams[output.index]
        try:
            deltas = stream.update(output.text, output.finished())
        except ToolCallError as exc:
            raise _unreadable(exc) from exc
        content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
        calls: list[ToolCallDelta] = []
        for d in deltas:
            if isinstance(d, CallStarted):
                function = FunctionCallDelta(name=d.name, arguments="")
                calls.append(
                    ToolCallDelta(index=d.index, id=d.id, type="function", function=function)
                )
            elif isinstance(d, ArgumentsDelta):
                if calls and calls[-1].index == d.index:
                    calls[-1].function.arguments += d.text
                else:
                    calls.append(
                        ToolCallDelta(index=d.index, function=FunctionCallDelta(arguments=d.text))
                    )
        reason = finish_reason(output.finish_reason, bool(stream.calls))
        return ChatDelta(content=content or None, tool_calls=calls or None), reason
