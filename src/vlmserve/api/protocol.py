"""Request bodies of the OpenAI-compatible endpoints (pydantic lives at the edge only).

Fail closed: every model forbids unknown fields and coerces nothing (`strict`: "1" is not
an int), NaN and infinities are refused. Unions carry "#"-prefixed tags so errors.py can
drop the tags from error locations and name the field as the client wrote it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from vlmserve.api.protocol_tools import MAX_TOOLS, ChatTool, ChatToolChoice, ToolCallIn
from vlmserve.registry import SpecError, parse_keep_alive
from vlmserve.types import MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS

MAX_N = 16  # samples per request: each one costs a full sequence of KV cache
MAX_STOP_SEQUENCES = 16
MAX_TOKENS_LIMIT = 2**31 - 1
INT64 = 2**63
INT32 = 2**31
MAX_LOGIT_BIAS_TOKENS = 1024
MAX_STOP_TOKEN_IDS = 64
MAX_PROMPTS = 128  # prompts in one completion request; each is an engine request of n samples


def keep_alive_seconds(value: float | str | None) -> float | None:
    """A keep-alive as the client wrote it -> seconds (-1: never); a ValueError for
    pydantic to report under the field's name."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except SpecError as exc:
        raise ValueError(exc.reason) from None


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _type_tag(value: Any) -> str | None:
    """ "#<type>" for an object; "#" for an object without a string "type" (errors.py then
    says the field is required and lists the known types); None for anything else."""
    if isinstance(value, dict):
        kind = value.get("type")
    elif isinstance(value, BaseModel):
        kind = getattr(value, "type", None)
    else:
        return None
    return f"#{kind}" if isinstance(kind, str) else "#"


# -- message content parts --------------------------------------------------------------------
class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ImageURL(StrictModel):
    url: str | None = Field(None, description="data:, http(s): or file: URL")
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="the image's pixel budget: low, high (the model's), auto (high)"
    )
    uuid: str | None = Field(None, description="names the image in the media cache")


class ImagePart(StrictModel):
    type: Literal["image_url"]
    image_url: ImageURL
    uuid: str | None = None


class VideoURL(StrictModel):
    url: str | None = Field(None, description="data:, http(s): or file: URL")
    uuid: str | None = Field(None, description="names the video in the media cache")


class VideoPart(StrictModel):
    type: Literal["video_url"]
    video_url: VideoURL
    uuid: str | None = None


class InputAudio(StrictModel):
    data: str
    format: str


class AudioPart(StrictModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[
    Annotated[TextPart, Tag("#text")]
    | Annotated[ImagePart, Tag("#image_url")]
    | Annotated[VideoPart, Tag("#video_url")]
    | Annotated[AudioPart, Tag("#input_audio")],
    Discriminator(_type_tag),
]


def _content_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "#text"
    return "#parts" if isinstance(value, list) else None


MessageContent = Annotated[
    Annotated[str, Tag("#text")] | Annotated[list[ContentPart], Tag("#parts")],
    Discriminator(
        _content_tag,
        custom_error_type="content_type",
        custom_error_message="content must be a string or a list of content parts",
    ),
]


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: MessageContent


# -- tool calling in the history (tool definitions: protocol_tools.py) ------------------------
class AssistantMessage(StrictModel):
    role: Literal["assistant"]
    content: MessageContent | None = None
    tool_calls: list[ToolCallIn] | None = None
    # What the openai client sends back when a reply is appended to the history as it came.
    refusal: None = None


class ToolMessage(StrictModel):
    role: Literal["tool"]
    content: MessageContent
    tool_call_id: str


def _role_tag(value: Any) -> str:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return f"#{role}" if role in ("assistant", "tool") else "#message"


AnyMessage = Annotated[
    Annotated[ChatMessage, Tag("#message")]
    | Annotated[AssistantMessage, Tag("#assistant")]
    | Annotated[ToolMessage, Tag("#tool")],
    Discriminator(_role_tag),
]


def _json_kind_tag(value: Any) -> str | None:
    for kind in (str, dict, list):
        if isinstance(value, kind):
            return f"#{kind.__name__}"
    return None


SchemaOrText = Annotated[
    Annotated[dict[str, Any], Tag("#dict")] | Annotated[str, Tag("#str")],
    Discriminator(
        _json_kind_tag,
        custom_error_type="object_or_string",
        custom_error_message="must be a JSON object or a string",
    ),
]


# -- structured outputs -----------------------------------------------------------------------
class JSONSchemaSpec(StrictModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class TextFormat(StrictModel):
    type: Literal["text"]


class JSONObjectFormat(StrictModel):
    type: Literal["json_object"]


class JSONSchemaFormat(StrictModel):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class StructuralTagItem(StrictModel):
    begin: str = Field(min_length=1)
    structure_schema: dict[str, Any] = Field(alias="schema")
    end: str


class StructuralTagFormat(StrictModel):
    """vLLM's two spellings: `structures` + `triggers`, or a single `format` object."""

    type: Literal["structural_tag"]
    structures: list[StructuralTagItem] | None = Field(None, min_length=1)
    triggers: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    format: dict[str, Any] | None = None


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("#text")]
    | Annotated[JSONObjectFormat, Tag("#json_object")]
    | Annotated[JSONSchemaFormat, Tag("#json_schema")]
    | Annotated[StructuralTagFormat, Tag("#structural_tag")],
    Discriminator(_type_tag),
]


class StructuredOutputs(StrictModel):
    """vLLM's `structured_outputs` extension; exactly one constraint must be set."""

    json_spec: SchemaOrText | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: SchemaOrText | None = None


class StreamOptions(StrictModel):
    include_usage: bool | None = None


# -- shared sampling fields -------------------------------------------------------------------
Stop = Annotated[
    Annotated[str, Tag("#str")]
    | Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(max_length=MAX_STOP_SEQUENCES),
        Tag("#list"),
    ],
    Discriminator(
        _json_kind_tag,
        custom_error_type="stop_type",
        custom_error_message="stop must be a string or a list of strings",
    ),
]


class SamplingFields(StrictModel):
    model: str
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, description="vLLM extension; 0 or -1 disables")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="vLLM extension")
    seed: int | None = Field(None, ge=-INT64, lt=INT64 - MAX_N)
    stop: Stop | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="vLLM extension")
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = Field(None, description="vLLM extension")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    cache_salt: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="vLLM extension: requests share cached prompt prefixes and media UUIDs "
        "only when their salts (and tenants) are equal",
    )
    keep_alive: float | str | None = Field(
        None,
        description="Ollama extension: how long the model stays loaded once idle after this "
        "request (seconds, '5m', '1h30m'; 0 unload at once; -1 never); default: the model's",
    )
    logit_bias: dict[str, Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]] | None = (
        Field(None, max_length=MAX_LOGIT_BIAS_TOKENS, description="token id -> bias")
    )
    # vLLM's sampling extensions, with SamplingParams' meanings.
    stop_token_ids: list[Annotated[int, Field(ge=0, lt=INT32)]] | None = Field(
        None, max_length=MAX_STOP_TOKEN_IDS
    )
    min_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS_LIMIT)
    ignore_eos: bool | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: float | str | None) -> float | None:
        return keep_alive_seconds(value)

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if stop == "":
            raise ValueError("a stop sequence must not be empty")
        return stop


class ChatCompletionRequest(SamplingFields):
    messages: list[AnyMessage] = Field(min_length=1)
    tools: list[ChatTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ChatToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


def _prompt_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "#text"
    if not isinstance(value, list):
        return None
    if all(isinstance(t, int) for t in value):
        return "#tokens"
    if all(isinstance(p, str) for p in value):
        return "#texts"
    if all(isinstance(p, list) for p in value):
        return "#token_lists"
    return None


TokenIds = list[Annotated[int, Field(ge=0)]]
Prompt = Annotated[
    Annotated[str, Tag("#text")]
    | Annotated[TokenIds, Tag("#tokens")]
    | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS), Tag("#texts")]
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS), Tag("#token_lists")],
    Discriminator(
        _prompt_tag,
        custom_error_type="prompt_type",
        custom_error_message=(
            "prompt must be a string, a list of token ids, or a list of several prompts "
            "(all strings or all token id lists)"
        ),
    ),
]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool | None = False

    @property
    def is_batch(self) -> bool:
        """A list of prompts (strings or token id lists), not one prompt."""
        p = self.prompt
        return not (isinstance(p, str) or not p or isinstance(p[0], int))

    def prompts(self) -> list[str | list[int]]:
        """The prompts, one per engine request (a single one is a list of one)."""
        if self.is_batch:
            return list(cast(list[str] | list[list[int]], self.prompt))
        return [cast(str | list[int], self.prompt)]

    def prompt_param(self, index: int) -> str:
        """How the client names prompt `index`: `prompt` alone, `prompt[i]` in a list."""
        return f"prompt[{index}]" if self.is_batch else "prompt"
