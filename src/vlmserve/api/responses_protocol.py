"""Request bodies of the Responses API (`POST /v1/responses`), fail closed like the rest of
the protocol: unknown fields are refused, and the fields OpenAI defines that this server does
not implement are named as unsupported (errors.UNSUPPORTED_FIELDS).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from vlmserve.api.protocol import MAX_TOKENS_LIMIT, StrictModel, _type_tag
from vlmserve.api.protocol_tools import MAX_TOOLS, FunctionTool, ResponsesToolChoice


# -- content parts ----------------------------------------------------------------------------
class InputText(StrictModel):
    type: Literal["input_text"]
    text: str


class InputImage(StrictModel):
    type: Literal["input_image"]
    image_url: str = Field(description="data:, http(s): or file: URL (the media policy applies)")
    detail: Literal["auto", "low", "high", "original"] | None = None

    @field_validator("detail")
    @classmethod
    def _not_original(cls, detail: str | None) -> str | None:
        # As chat's image_url.detail: low caps the pixel budget, high and auto are the
        # model's own; there is no budget beyond the model's for "original".
        if detail == "original":
            raise ValueError("detail 'original' is not supported; one of auto, low, high")
        return detail


class OutputText(StrictModel):
    """Text of an earlier answer, as `output[]` returned it."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list, max_length=0)
    logprobs: list[Any] | None = None


ContentPart = Annotated[
    Annotated[InputText, Tag("#input_text")]
    | Annotated[InputImage, Tag("#input_image")]
    | Annotated[OutputText, Tag("#output_text")],
    Discriminator(_type_tag),
]


def _content_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "#text"
    return "#parts" if isinstance(value, list) else None


Content = Annotated[
    Annotated[str, Tag("#text")] | Annotated[list[ContentPart], Tag("#parts")],
    Discriminator(
        _content_tag,
        custom_error_type="content_type",
        custom_error_message="content must be a string or a list of content parts",
    ),
]

Status = Literal["in_progress", "completed", "incomplete"]


# -- input items ------------------------------------------------------------------------------
class MessageItem(StrictModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content
    id: str | None = None
    status: Status | None = None


class FunctionCallItem(StrictModel):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = Field(description="the arguments object as a JSON string")
    id: str | None = None
    status: Status | None = None


class FunctionCallOutputItem(StrictModel):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText]
    id: str | None = None
    status: Status | None = None


def _item_tag(value: Any) -> str | None:
    tag = _type_tag(value)
    if tag == "#" and isinstance(value, dict) and "role" in value:
        return "#message"  # an "easy" message: {"role", "content"} without a type
    return tag


InputItem = Annotated[
    Annotated[MessageItem, Tag("#message")]
    | Annotated[FunctionCallItem, Tag("#function_call")]
    | Annotated[FunctionCallOutputItem, Tag("#function_call_output")],
    Discriminator(_item_tag),
]


def _input_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "#text"
    return "#items" if isinstance(value, list) else None


Input = Annotated[
    Annotated[str, Tag("#text")] | Annotated[list[InputItem], Tag("#items")],
    Discriminator(
        _input_tag,
        custom_error_type="input_type",
        custom_error_message="input must be a string or a list of input items",
    ),
]


# -- text format ------------------------------------------------------------------------------
class TextFormatText(StrictModel):
    type: Literal["text"]


class TextFormatJSONObject(StrictModel):
    type: Literal["json_object"]


class TextFormatJSONSchema(StrictModel):
    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    Annotated[TextFormatText, Tag("#text")]
    | Annotated[TextFormatJSONObject, Tag("#json_object")]
    | Annotated[TextFormatJSONSchema, Tag("#json_schema")],
    Discriminator(_type_tag),
]


class TextConfig(StrictModel):
    format: TextFormat | None = None


# -- the request ------------------------------------------------------------------------------
class ResponsesRequest(StrictModel):
    model: str
    input: Input
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = True
    stream: bool | None = False
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    user: str | None = Field(None, max_length=256)
    truncation: Literal["disabled"] | None = Field(
        None, description="'auto' (dropping context) is not supported"
    )
