"""The tools a request offers and how the model may use them, as the engine's constraint.

| mode | output |
|---|---|
| `none` | text that never contains `<tool_call>` / `</tool_call>` (or the response format) |
| `auto` | text, or calls once the model writes `<tool_call>` (with a response format: JSON or calls) |
| `required` | only calls (one, or several with `parallel`) |
| named (`required` + `function`) | only calls of that function |

Tool definitions are rendered into the prompt in every mode (the chat template's tools
section, or the built-in one: multimodal/tool_template.py), as OpenAI does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from vlmserve.serving.errors import ServingError
from vlmserve.structured.tools import NO_TOOL_CALLS_LARK
from vlmserve.types import (
    SamplingParams,
    StructuredOutputsParams,
    ToolCallsConstraint,
    ToolFunction,
)

ToolMode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class Tools:
    """`definitions`: OpenAI chat-shaped tool dicts (`{"type": "function", "function":
    {...}}`) for the chat template; `functions`: the same as the constraint sees them."""

    definitions: list[dict[str, Any]]
    functions: tuple[ToolFunction, ...]
    mode: ToolMode = "auto"
    function: str | None = None  # a named choice: calls of this function only
    parallel: bool = True

    def __post_init__(self) -> None:
        if self.function is not None and self.function not in self.names:
            raise ValueError(f"tool choice names {self.function!r}, which is not offered")

    @property
    def names(self) -> frozenset[str]:
        return frozenset(fn.name for fn in self.functions)

    @property
    def parses_calls(self) -> bool:
        return self.mode != "none"

    def name_fields(
        self, exc: ServingError, function_param: Callable[[int], str], text_param: str
    ) -> None:
        """Rename, in `exc`'s param and message, the constraint's fields
        (`tool_calls.functions[i].parameters`, `tool_calls.text_schema`) after the request's:
        `function_param(index in the request's tools)`, `text_param` (its response format's
        schema)."""
        param = exc.param or ""
        match = re.match(r"tool_calls\.functions\[(\d+)\]\.parameters", param)
        if match:
            name = self._constrained[int(match.group(1))].name
            index = next(i for i, fn in enumerate(self.functions) if fn.name == name)
            mapped = function_param(index) + param[match.end() :]
        elif param.startswith("tool_calls.text_schema"):
            mapped = text_param + param[len("tool_calls.text_schema") :]
        else:
            return
        exc.message = exc.message.replace(param, mapped, 1)
        exc.param = mapped

    @property
    def _constrained(self) -> tuple[ToolFunction, ...]:
        """The functions the output may call."""
        if self.function is None:
            return self.functions
        return tuple(fn for fn in self.functions if fn.name == self.function)

    def constrain(self, params: SamplingParams) -> SamplingParams:
        """`params` with the tool-call constraint; a response format they carry governs the
        text (auto) or stays as it is (none). Raises ServingError for a combination the
        grammar cannot express."""
        given = params.structured_outputs
        if params.min_tokens:
            # As with any constraint: holding back the end the grammar needs could leave a
            # step with nothing allowed (SamplingParams refuses the pair).
            raise ServingError(
                400,
                "min_tokens cannot be combined with tools (the grammar decides where the "
                "output ends)",
                "min_tokens",
            )
        if self.mode == "none":
            if given is not None:
                return params
            return dataclasses.replace(
                params, structured_outputs=StructuredOutputsParams(grammar=NO_TOOL_CALLS_LARK)
            )
        for field in ("stop", "stop_token_ids"):
            if getattr(params, field):
                # A stop could cut a call in half: its arguments would not parse.
                raise ServingError(400, f"{field} cannot be combined with tool calls", field)
        text_schema: dict[str, Any] | None = None
        text_strict = False
        if self.mode == "auto" and given is not None:
            kind = given.kind()
            if kind == "json_object":
                text_schema = {"type": "object"}
            elif kind == "json" and isinstance(given.json, dict):
                text_schema, text_strict = given.json, given.strict
            else:
                raise ServingError(
                    400,
                    f"a {kind} constraint cannot be combined with tools in auto mode; use a "
                    "JSON schema (as an object) or json_object response format, or "
                    "tool_choice 'none'",
                    f"structured_outputs.{kind}",
                )
        constraint = ToolCallsConstraint(
            functions=self._constrained,
            required=self.mode == "required",
            parallel=self.parallel,
            text_schema=text_schema,
            text_strict=text_strict,
        )
        return dataclasses.replace(
            params, structured_outputs=StructuredOutputsParams(tool_calls=constraint)
        )
