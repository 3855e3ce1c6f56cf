"""Request parsing and mapping to SamplingParams, without an engine."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vlmserve.api.errors import APIError, format_loc, validation_error
from vlmserve.api.protocol import ChatCompletionRequest, CompletionRequest
from vlmserve.api.sampling import (
    chat_sampling_params,
    client_param,
    completion_sampling_params,
)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def rejection(body: dict[str, Any], model: type = ChatCompletionRequest) -> APIError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return validation_error(info.value.errors())


def test_format_loc_drops_body_and_union_tags() -> None:
    loc = ("body", "messages", 0, "content", "#parts", 1, "#image_url", "image_url", "url")
    assert format_loc(loc) == "messages[0].content[1].image_url.url"
    assert format_loc(("body",)) is None


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": "5"}, "max_tokens", "valid integer"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"stop": [""]}, "stop", "at least 1 character"),
        ({"stop": ["x"] * 17}, "stop", "at most 16"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"frobnicate": 1}, "frobnicate", "not a known field"),
        ({"functions": []}, "functions", "not supported"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "required"),
        ({"audio": {}}, "audio", "not supported"),
        ({"logit_bias": {"5": 100.5}}, 'logit_bias["5"]', "less than or equal to 100"),
        ({"stop_token_ids": [-1]}, "stop_token_ids[0]", "greater than or equal to 0"),
        ({"min_tokens": -1}, "min_tokens", "greater than or equal to 0"),
        ({"stream_options": {"continuous_usage_stats": True}}, "stream_options", "known field"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
            "required",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "'yaml' is not known"),
        (
            {"response_format": None, "structured_outputs": {"choice": []}},
            "structured_outputs.choice",
            "at least 1 item",
        ),
    ],
)
def test_field_rejections_name_the_field(fields: dict[str, Any], param: str, needle: str) -> None:
    error = rejection(chat(**fields))
    assert error.status == 400
    assert error.param is not None and error.param.startswith(param), error.message
    assert needle in error.message


@pytest.mark.parametrize(
    ("message", "param", "needle"),
    [
        ({"role": "robot", "content": "x"}, "messages[0].role", "'system'"),
        ({"role": "user"}, "messages[0].content", "required"),
        ({"role": "user", "content": 5}, "messages[0].content", "string or a list"),
        (
            {"role": "user", "content": [{"type": "sound"}]},
            "messages[0].content[0].type",
            "'sound' is not known",
        ),
        (
            {"role": "user", "content": [{"text": "x"}]},
            "messages[0].content[0].type",
            "'messages[0].content[0].type' is required: a string, one of 'text', 'image_url', "
            "'video_url', 'input_audio'",
        ),
        (
            {"role": "user", "content": [{"type": None, "text": "x"}]},
            "messages[0].content[0].type",
            "is required",
        ),
        (
            {"role": "user", "content": ["just text"]},
            "messages[0].content[0]",
            "must be an object with a 'type' field",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "x", "extra": 1}]},
            "messages[0].content[0].extra",
            "not a known field",
        ),
        ({"role": "user", "content": "x", "name": "bob"}, "messages[0].name", "not supported"),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "medium"}}],
            },
            "messages[0].content[0].image_url.detail",
            "'auto', 'low' or 'high'",
        ),
    ],
)
def test_message_rejections(message: dict[str, Any], param: str, needle: str) -> None:
    error = rejection(chat(messages=[message]))
    assert error.param == param, error.message
    assert needle in error.message


def test_nan_and_non_object_bodies() -> None:
    assert "temperature" in rejection(chat(temperature=float("nan"))).message
    error = validation_error(
        [{"type": "model_attributes_type", "loc": ("body",), "msg": "x", "input": []}]
    )
    assert error.message == "the request body must be a JSON object" and error.param is None


def test_chat_params_mapping() -> None:
    body = ChatCompletionRequest.model_validate(
        chat(
            temperature=0.5,
            top_p=0.9,
            top_k=5,
            min_p=0.1,
            n=2,
            seed=7,
            stop="END",
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            repetition_penalty=1.1,
            max_completion_tokens=9,
            logprobs=True,
            top_logprobs=3,
        )
    )
    p = chat_sampling_params(body)
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.n, p.seed) == (0.5, 0.9, 5, 0.1, 2, 7)
    assert p.stop == ["END"] and p.max_tokens == 9 and p.logprobs == 3
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -0.5, 1.1)
    # Chat's default is "until the context is full"; completions default to 16 like OpenAI.
    assert chat_sampling_params(ChatCompletionRequest.model_validate(chat())).max_tokens is None
    assert chat_sampling_params(ChatCompletionRequest.model_validate(chat())).logprobs is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 3, "max_completion_tokens": 4}, "max_completion_tokens"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
        (
            {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
            "structured_outputs",
        ),
        ({"structured_outputs": {}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        ({"structured_outputs": {"structural_tag": None}}, "structured_outputs"),
        ({"response_format": {"type": "structural_tag"}}, "response_format"),
        ({"response_format": {"type": "structural_tag", "format": None}}, "response_format"),
        (
            {
                "response_format": {
                    "type": "structural_tag",
                    "structures": [{"begin": "<a>", "schema": {}, "end": "</a>"}],
                }
            },
            "response_format.triggers",
        ),
    ],
)
def test_cross_field_rejections(fields: dict[str, Any], param: str) -> None:
    body = ChatCompletionRequest.model_validate(chat(**fields))
    with pytest.raises(APIError) as info:
        chat_sampling_params(body)
    assert info.value.status == 400 and info.value.param == param


def test_structured_outputs_mapping() -> None:
    def so(**fields: Any) -> Any:
        params = chat_sampling_params(ChatCompletionRequest.model_validate(chat(**fields)))
        return params.structured_outputs

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    strict = so(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": schema, "strict": True},
        }
    )
    assert strict.json == schema and strict.strict is True
    assert (
        so(
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        ).strict
        is False
    )
    assert so(response_format={"type": "json_object"}).json_object is True
    assert so(response_format={"type": "text"}) is None
    assert so(structured_outputs={"choice": ["a", "b"]}).choice == ["a", "b"]
    assert so(structured_outputs={"json": schema}).json == schema
    assert so(structured_outputs={"regex": "[0-9]+"}).regex == "[0-9]+"
    assert so(structured_outputs={"grammar": "start: 'a'"}).grammar == "start: 'a'"
    tag = so(
        response_format={
            "type": "structural_tag",
            "triggers": ["<a"],
            "structures": [{"begin": "<a>", "schema": schema, "end": "</a>"}],
        }
    )
    assert tag.structural_tag["structures"][0]["schema"] == schema


def test_completion_request() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3], "logprobs": 2})
    params = completion_sampling_params(body)
    assert params.max_tokens == 16 and params.logprobs == 2
    for prompt, prompts, params in [
        ("a", ["a"], ["prompt"]),
        ([1, 2], [[1, 2]], ["prompt"]),
        (["a", "b"], ["a", "b"], ["prompt[0]", "prompt[1]"]),
        ([[1], [2, 3]], [[1], [2, 3]], ["prompt[0]", "prompt[1]"]),
    ]:
        body = CompletionRequest.model_validate({"model": "m", "prompt": prompt})
        assert body.prompts() == prompts
        assert [body.prompt_param(i) for i in range(len(prompts))] == params
    for bad in (["a", [1]], [["a"]], {"p": 1}, [True], None):
        error = rejection({"model": "m", "prompt": bad}, CompletionRequest)
        assert error.param is not None and error.param.startswith("prompt"), error.message
    assert (
        "list of several prompts"
        in rejection({"model": "m", "prompt": ["a", [1]]}, CompletionRequest).message
    )
    assert (
        "not supported"
        in rejection({"model": "m", "prompt": "a", "suffix": "b"}, CompletionRequest).message
    )


def test_structured_errors_name_the_field_the_client_sent() -> None:
    schema_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    via_format = ChatCompletionRequest.model_validate(chat(response_format=schema_format))
    assert (
        client_param(via_format, "structured_outputs.json") == "response_format.json_schema.schema"
    )
    tag = {"type": "structural_tag", "format": {"type": "x"}}
    via_tag = ChatCompletionRequest.model_validate(chat(response_format=tag))
    assert client_param(via_tag, "structured_outputs.structural_tag") == "response_format"
    via_ext = ChatCompletionRequest.model_validate(chat(structured_outputs={"regex": "("}))
    assert client_param(via_ext, "structured_outputs.regex") == "structured_outputs.regex"
    assert client_param(via_format, "max_tokens") == "max_tokens"


def test_vllm_sampling_extensions_and_logit_bias_mapping() -> None:
    body = CompletionRequest.model_validate(
        {
            "model": "m",
            "prompt": "a",
            "logit_bias": {"12": -100, "7": 2.5},
            "stop_token_ids": [3, 4],
            "min_tokens": 2,
            "ignore_eos": True,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }
    )
    p = completion_sampling_params(body)
    assert p.logit_bias == {12: -100.0, 7: 2.5} and p.stop_token_ids == [3, 4]
    assert (p.min_tokens, p.ignore_eos, p.include_stop_str_in_output) == (2, True, True)
    assert p.skip_special_tokens is False
    unset = completion_sampling_params(
        CompletionRequest.model_validate({"model": "m", "prompt": "a"})
    )
    assert unset.logit_bias is None and unset.skip_special_tokens is True
    with pytest.raises(APIError) as info:
        completion_sampling_params(
            CompletionRequest.model_validate(
                {"model": "m", "prompt": "a", "logit_bias": {"1e3": 1}}
            )
        )
    assert info.value.param == 'logit_bias["1e3"]'
