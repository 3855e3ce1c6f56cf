"""Tool definitions and tool choices in request bodies: Chat Completions' nested shape
(`{"type": "function", "function": {...}}`) and the Responses API's flat one.

These models need nothing from protocol.py (which uses them), so they sit below it; they
follow the same fail-closed rules (`STRICT`: unknown fields refused, no coercion).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

# protocol.StrictModel's configuration (this module cannot import protocol.py: it uses these).
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
MAX_TOOLS = 128
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class _Strict(BaseModel):
    model_config = STRICT


class FunctionDefinition(_Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="JSON schema of the arguments object; absent: no parameters"
    )
    strict: bool | None = Field(None, description="OpenAI strict mode for the schema")


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


def _choice_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "#mode"
    return "#function" if isinstance(value, dict) else None


ToolChoiceMode = Literal["none", "auto", "required"]

ChatToolChoice = Annotated[
    Annotated[ToolChoiceMode, Tag("#mode")] | Annotated[NamedToolChoice, Tag("#function")],
    Discriminator(
        _choice_tag,
        custom_error_type="tool_choice_type",
        custom_error_message="tool_choice must be 'none', 'auto', 'required' or a function",
    ),
]


class ToolCallFunction(_Strict):
    name: str
    arguments: str = Field(description="the arguments object as a JSON string")


class ToolCallIn(_Strict):
    """A call in an assistant message of the history."""

    id: str
    type: Literal["function"]
    function: ToolCallFunction


# -- the Responses API's flat shapes ----------------------------------------------------------
class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = Field(None, description="default true (the Responses API's)")


class FunctionToolChoice(_Strict):
    type: Literal["function"]
    name: str


ResponsesToolChoice = Annotated[
    Annotated[ToolChoiceMode, Tag("#mode")] | Annotated[FunctionToolChoice, Tag("#function")],
    Discriminator(
        _choice_tag,
        custom_error_type="tool_choice_type",
        custom_error_message="tool_choice must be 'none', 'auto', 'required' or a function",
    ),
]


def tool_mode(
    choice: ToolChoiceMode | NamedToolChoice | FunctionToolChoice | None,
) -> ToolChoiceMode:
    """`required` for a named function (only its calls); `auto` when not given."""
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else "required"
