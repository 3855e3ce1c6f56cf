"""Reading tool calls out of generated text, whole or while it streams.

The text was generated under the tool-call grammar (structured/tools.py), so its shape is
known: optional content, then `<tool_call>\\n{"name": NAME, "arguments": ARGS}\\n</tool_call>`
blocks separated by a newline. The arguments are returned exactly as generated (the JSON
text), never re-serialised. A text that does not have this shape means the grammar failed:
`ToolCallError`, a server fault, never a silently dropped call.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from vlmserve.structured.tools import (
    CALL_ARGUMENTS,
    CALL_NAME,
    CALL_OPEN,
    CALL_SEPARATOR,
    CALL_TAIL,
)

_DECODER = json.JSONDecoder()


class ToolCallError(RuntimeError):
    """Generated text that is not in the tool-call format: the constraint did not hold."""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the arguments object as JSON text


@dataclass
class PartialCall:
    name: str
    arguments: str  # as far as it is safe to send (a closing brace may be the call's own)
    complete: bool


@dataclass
class Scan:
    content: str  # content safe to send so far
    calls: list[PartialCall] = field(default_factory=list)


def _held_back(text: str, marker: str) -> int:
    """Characters at the end of `text` that may be the start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def scan(text: str, finished: bool) -> Scan:
    """What of `text` is content and which calls it holds. While the text may still grow
    (`finished` False), an ending that could become `<tool_call>` or the end of a call is
    held back. Raises ToolCallError for a finished text not in the format."""
    start = text.find(CALL_OPEN)
    if start < 0:
        held = 0
        if not finished:
            held = max(_held_back(text, CALL_SEPARATOR + CALL_OPEN), _held_back(text, CALL_OPEN))
        return Scan(text[: len(text) - held])
    result = Scan(text[:start].removesuffix(CALL_SEPARATOR))
    pos = start + len(CALL_OPEN)
    while True:
        call = _call_at(text, pos)
        if call is None:
            if finished:
                raise ToolCallError(f"a tool call does not parse at offset {pos}: {text!r}")
            return result
        partial, pos = call
        result.calls.append(partial)
        if not partial.complete:
            if finished:
                raise ToolCallError(f"a tool call was left open: {text!r}")
            return result
        if text.startswith(CALL_SEPARATOR + CALL_OPEN, pos):
            pos += len(CALL_SEPARATOR + CALL_OPEN)
            continue
        if finished and pos != len(text):
            raise ToolCallError(f"text after the tool calls: {text[pos:]!r}")
        return result


def _call_at(text: str, pos: int) -> tuple[PartialCall, int] | None:
    """The call whose head starts at `pos` (after `<tool_call>`), and where it ends; None
    while its name is not complete."""
    if not text.startswith(CALL_NAME, pos):
        return None
    try:
        name, after = _DECODER.raw_decode(text, pos + len(CALL_NAME))
    except json.JSONDecodeError:
        return None
    if not isinstance(name, str) or not text.startswith(CALL_ARGUMENTS, after):
        return None
    args_start = after + len(CALL_ARGUMENTS)
    # Compact JSON holds no raw newline, so the first "}\n</tool_call>" ends the call.
    end = text.find(CALL_TAIL, args_start)
    if end < 0:
        arguments = text[args_start:]
        arguments = arguments[: len(arguments) - _held_back(arguments, CALL_TAIL)]
        return PartialCall(name, arguments, complete=False), len(text)
    return PartialCall(name, text[args_start:end], complete=True), end + len(CALL_TAIL)


@dataclass
class ParsedOutput:
    content: str | None  # None when the model only called tools
    tool_calls: list[ToolCall]


def parse_output(text: str, names: frozenset[str]) -> ParsedOutput:
    """A finished output: its content and its calls, each naming one of `names` with
    arguments that are a JSON object."""
    result = scan(text, finished=True)
    calls = []
    for partial in result.calls:
        check_call(partial, names)
        calls.append(ToolCall(new_call_id(), partial.name, partial.arguments))
    content = result.content if result.content or not calls else None
    return ParsedOutput(content, calls)


def check_call(call: PartialCall, names: frozenset[str]) -> None:
    if call.name not in names:
        raise ToolCallError(f"a tool call names {call.name!r}, which was not offered")
    try:
        arguments = json.loads(call.arguments)
    except json.JSONDecodeError as exc:
        raise ToolCallError(f"tool call arguments are not JSON: {call.arguments!r}") from exc
    if not isinstance(arguments, dict):
        raise ToolCallError(f"tool call arguments are not an object: {call.arguments!r}")


def finish_reason(engine_reason: str | None, has_calls: bool) -> str | None:
    """OpenAI's `tool_calls` when the model ended its calls itself. When the budget ran out
    the engine closed the last call (its arguments are valid but may be cut short): that
    stays `length`, so a client can tell before it runs the call."""
    if has_calls and engine_reason == "stop":
        return "tool_calls"
    return engine_reason


# -- streaming --------------------------------------------------------------------------------
@dataclass
class ContentDelta:
    text: str


@dataclass
class CallStarted:
    index: int  # among this choice's calls
    id: str
    name: str


@dataclass
class ArgumentsDelta:
    index: int
    text: str


@dataclass
class CallDone:
    index: int
    call: ToolCall


ToolDelta = ContentDelta | CallStarted | ArgumentsDelta | CallDone


class ToolCallStream:
    """One choice's text as it grows -> what to send since the last update."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.sent_content = 0
        self.calls: list[ToolCall] = []
        self.done = 0  # calls reported complete

    def update(self, text: str, finished: bool) -> list[ToolDelta]:
        result = scan(text, finished)
        out: list[ToolDelta] = []
        if len(result.content) > self.sent_content:
            out.append(ContentDelta(result.content[self.sent_content :]))
            self.sent_content = len(result.content)
        for index, partial in enumerate(result.calls):
            if index == len(self.calls):
                self.calls.append(ToolCall(new_call_id(), partial.name, ""))
                out.append(CallStarted(index, self.calls[index].id, partial.name))
            call = self.calls[index]
            if len(partial.arguments) > len(call.arguments):
                out.append(ArgumentsDelta(index, partial.arguments[len(call.arguments) :]))
                call.arguments = partial.arguments
            if partial.complete and index == self.done:
                check_call(partial, self.names)
                out.append(CallDone(index, call))
                self.done += 1
        return out
