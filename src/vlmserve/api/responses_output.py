"""A finished generation as a Responses API answer: the response object with its output
items (a message for the text, then one function call per tool call), usage and the
request's settings echoed. Streaming builds the same objects event by event
(responses_stream.py)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from vlmserve.api.responses_objects import (
    FunctionCallOutput,
    IncompleteDetails,
    InputTokensDetails,
    ItemStatus,
    MessageOutput,
    OutputItem,
    OutputTextPart,
    ResponseError,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
)
from vlmserve.serving import ServingError
from vlmserve.serving.tool_calls import (
    ToolCallError,
    parse_output,
)
from vlmserve.serving.tools import Tools
from vlmserve.types import RequestOutput


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class ResponseShape:
    """What every state of one response repeats from its request."""

    id: str
    model: str
    fields: dict[str, Any]  # instructions, tools, tool_choice, ... as the response echoes them
    tools: Tools | None
    created_at: int = 0

    def __post_init__(self) -> None:
        self.created_at = self.created_at or int(time.time())

    def response(
        self,
        status: ResponseStatus,
        output: list[OutputItem],
        final: RequestOutput | None = None,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        usage = None
        if final is not None:
            prompt = len(final.prompt_token_ids)
            completion = sum(len(c.token_ids) for c in final.outputs)
            cached = final.metrics.num_cached_tokens if final.metrics is not None else 0
            usage = ResponseUsage(
                input_tokens=prompt,
                input_tokens_details=InputTokensDetails(cached_tokens=cached),
                output_tokens=completion,
                total_tokens=prompt + completion,
            )
        text = "".join(
            part.text for item in output if isinstance(item, MessageOutput) for part in item.content
        )
        incomplete = (
            IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
        )
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            error=error,
            incomplete_details=incomplete,
            model=self.model,
            output=output,
            output_text=text,
            usage=usage,
            **self.fields,
        )

    def items(self, final: RequestOutput) -> list[OutputItem]:
        """The output items of a finished generation (not streamed)."""
        choice = final.outputs[0]
        cut = choice.finish_reason == "length"
        content, calls = choice.text, []
        if self.tools is not None and self.tools.parses_calls:
            try:
                parsed = parse_output(choice.text, self.tools.names)
            except ToolCallError as exc:
                raise ServingError(500, f"the model's tool calls could not be read: {exc}") from exc
            content, calls = parsed.content or "", parsed.tool_calls
        items: list[OutputItem] = []
        if content or not calls:
            part = OutputTextPart(text=content)
            items.append(MessageOutput(id=item_id("msg"), status="completed", content=[part]))
        for call in calls:
            items.append(
                FunctionCallOutput(
                    id=item_id("fc"),
                    call_id=call.id,
                    name=call.name,
                    arguments=call.arguments,
                    status="completed",
                )
            )
        if cut and isinstance(items[-1], MessageOutput):
            items[-1].status = "incomplete"  # its text was cut (a cut call is closed validly)
        return items


def status_of(final: RequestOutput) -> ItemStatus:
    return "incomplete" if final.outputs[0].finish_reason == "length" else "completed"
