"""The bodies of `POST /v1/moderations`: OpenAI's request (`input`, `model`) with unknown
fields refused, one optional namespaced extension, and OpenAI's response keyed by the
policy's classes with vlmserve's fields under `vlmserve`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag

from vlmserve.api.protocol import INT64, MAX_TOKENS_LIMIT, StrictModel

MAX_INPUTS = 32  # strings per request: each is a full classification


class TextInput(StrictModel):
    type: Literal["text"]
    text: str


class ImageURL(StrictModel):
    url: str = Field(description="http(s) or data: URL, fetched under the server's media policy")


class ImageInput(StrictModel):
    type: Literal["image_url"]
    image_url: ImageURL


def _part_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"#{kind}" if isinstance(kind, str) else None


InputPart = Annotated[
    Annotated[TextInput, Tag("#text")] | Annotated[ImageInput, Tag("#image_url")],
    Discriminator(
        _part_tag,
        custom_error_type="part_type",
        custom_error_message="must be an object with type 'text' or 'image_url'",
    ),
]


def _input_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "#text"
    if isinstance(value, list):
        return "#strings" if value and all(isinstance(v, str) for v in value) else "#parts"
    return None


ModerationInput = Annotated[
    Annotated[str, Tag("#text")]
    | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS), Tag("#strings")]
    | Annotated[list[InputPart], Field(min_length=1), Tag("#parts")],
    Discriminator(
        _input_tag,
        custom_error_type="input_type",
        custom_error_message=(
            "input must be a string, a list of strings, or a list of text and image_url parts"
        ),
    ),
]


class ModerationExtension(StrictModel):
    """vlmserve's knobs for the written answer (the scores never depend on them)."""

    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: the most probable class")
    seed: int | None = Field(None, ge=-INT64, lt=INT64)


class ModerationRequest(StrictModel):
    input: ModerationInput
    model: str | None = Field(None, description="default: the first model the server serves")
    vlmserve: ModerationExtension | None = Field(None, description="vlmserve extension")


class VlmserveResult(BaseModel):
    best_class: str
    explanation: str
    extracted_text: str
    language: str
    extra: dict[str, Any] | None = Field(description="the policy's schema-extension fields")
    policy: str = Field(description="the policy's name")
    policy_hash: str
    finish_reason: str | None


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[Literal["text", "image"]]]
    vlmserve: VlmserveResult


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
