"""Protocol request -> the engine's `SamplingParams`: the one place OpenAI field semantics
(defaults, aliases, cross-field rules) meet the engine's types."""

from __future__ import annotations

import json
from typing import Any

from vlmserve.api.errors import APIError
from vlmserve.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    JSONObjectFormat,
    JSONSchemaFormat,
    SamplingFields,
    StructuralTagFormat,
    TextFormat,
)
from vlmserve.types import SamplingParams, StructuredOutputsParams


def _structured(request: SamplingFields) -> StructuredOutputsParams | None:
    fmt = request.response_format
    extension = request.structured_outputs
    if extension is not None and fmt is not None and not isinstance(fmt, TextFormat):
        raise APIError(
            400,
            "give either response_format or structured_outputs, not both",
            "structured_outputs",
        )
    if extension is not None:
        fields = extension.model_dump(by_alias=True, exclude_none=True)
        kinds = [k for k, v in fields.items() if v is not False]
        if len(kinds) != 1:
            raise APIError(
                400,
                "structured_outputs needs exactly one of json, regex, choice, grammar, "
                f"json_object, structural_tag; got {kinds or 'none'}",
                "structured_outputs",
            )
        # A schema given through the extension is applied as written (vLLM's semantics).
        return StructuredOutputsParams(
            json=extension.json_spec,
            regex=extension.regex,
            choice=extension.choice,
            grammar=extension.grammar,
            json_object=extension.json_object,
            structural_tag=extension.structural_tag,
            strict=False,
        )
    if fmt is None or isinstance(fmt, TextFormat):
        return None
    if isinstance(fmt, JSONObjectFormat):
        return StructuredOutputsParams(json_object=True)
    if isinstance(fmt, JSONSchemaFormat):
        spec = fmt.json_schema
        return StructuredOutputsParams(json=spec.json_schema, strict=bool(spec.strict))
    assert isinstance(fmt, StructuralTagFormat)
    if (fmt.format is None) == (fmt.structures is None):
        raise APIError(
            400,
            "a structural_tag response_format needs either 'format' or 'structures' (with "
            "'triggers')",
            "response_format",
        )
    if fmt.structures is not None and fmt.triggers is None:
        raise APIError(
            400, "structural_tag 'structures' need 'triggers'", "response_format.triggers"
        )
    return StructuredOutputsParams(structural_tag=fmt.model_dump(by_alias=True, exclude_none=True))


def client_param(request: SamplingFields, param: str | None) -> str | None:
    """The engine names structured-output problems after `structured_outputs.<kind>`; a
    client that used `response_format` should see the field it actually sent."""
    if param is None or request.response_format is None or request.structured_outputs:
        return param
    head, _, rest = param.partition(".")
    if head != "structured_outputs":
        return param
    kind, _, tail = rest.partition(".")
    field = "response_format.json_schema.schema" if kind == "json" else "response_format"
    return f"{field}.{tail}" if tail and kind == "json" else field


def _common(request: SamplingFields) -> dict[str, Any]:
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", "stream_options")
    fields: dict[str, Any] = {
        "n": request.n,
        "seed": request.seed,
        "stop": [request.stop] if isinstance(request.stop, str) else list(request.stop or []),
        "structured_outputs": _structured(request),
    }
    if request.logit_bias:
        fields["logit_bias"] = _logit_bias(request.logit_bias)
    # Unset fields keep SamplingParams' defaults, which are OpenAI's (vLLM's for its own).
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "stop_token_ids",
        "min_tokens",
        "ignore_eos",
        "include_stop_str_in_output",
        "skip_special_tokens",
    ):
        value = getattr(request, name)
        if value is not None:
            fields[name] = value
    return fields


def _logit_bias(bias: dict[str, float]) -> dict[int, float]:
    """OpenAI's JSON keys are token ids written as strings; the vocabulary check needs the
    model and happens when the engine accepts the request."""
    out = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or len(key) > 10:
            raise APIError(
                400,
                f"logit_bias[{json.dumps(key)}]: keys must be token ids (decimal integers as "
                'strings, like "1234")',
                f"logit_bias[{json.dumps(key)}]",
            )
        out[int(key)] = value
    return out


def _build(fields: dict[str, Any]) -> SamplingParams:
    try:
        return SamplingParams(**fields)
    except ValueError as exc:  # the protocol checks come first; this catches combinations
        # SamplingParams' messages start with the field at fault ("min_tokens (5) must ...").
        field = str(exc).split(" ", 1)[0]
        raise APIError(400, str(exc), field if field in fields else None) from exc


def chat_sampling_params(request: ChatCompletionRequest) -> SamplingParams:
    fields = _common(request)
    if (
        request.max_tokens is not None
        and request.max_completion_tokens is not None
        and request.max_tokens != request.max_completion_tokens
    ):
        raise APIError(
            400,
            "max_tokens and max_completion_tokens disagree; give one of them",
            "max_completion_tokens",
        )
    # OpenAI's chat default is "until the context is full": None asks the engine for that.
    fields["max_tokens"] = request.max_completion_tokens or request.max_tokens
    if request.top_logprobs is not None and not request.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", "top_logprobs")
    if request.logprobs:
        fields["logprobs"] = request.top_logprobs or 0
    return _build(fields)


def completion_sampling_params(request: CompletionRequest) -> SamplingParams:
    fields = _common(request)
    fields["max_tokens"] = request.max_tokens
    fields["logprobs"] = request.logprobs
    return _build(fields)
