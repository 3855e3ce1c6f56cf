"""Tool calling on /v1/chat/completions: the request's `tools` / `tool_choice` /
`parallel_tool_calls` as the serving layer's `Tools`, and the calls read out of the output
as OpenAI's `message.tool_calls` or its streamed tool-call deltas."""

from __future__ import annotations

import logging

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


def chat_tools(body: ChatCompletionRequest) -> Tools | None:
    """None when the request offers no tools (then `tool_choice` may only be none/auto)."""
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice not in ("none", "auto"):
            raise APIError(400, "tool_choice needs tools to choose from", "tool_choice")
        return None
    functions: list[ToolFunction] = []
    for index, tool in enumerate(body.tools):
        fn = tool.function
        if any(other.name == fn.name for other in functions):
            raise APIError(400, f"two tools are named {fn.name!r}", f"tools[{index}].function.name")
        functions.append(ToolFunction(fn.name, fn.parameters or NO_PARAMETERS, bool(fn.strict)))
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    if named is not None and all(fn.name != named for fn in functions):
        raise APIError(
            400, f"tool_choice names {named!r}, which is not in tools", "tool_choice.function.name"
        )
    return Tools(
        definitions=[tool.model_dump(exclude_none=True) for tool in body.tools],
        functions=tuple(functions),
        mode=tool_mode(choice),
        function=named,
        parallel=body.parallel_tool_calls is not False,
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
