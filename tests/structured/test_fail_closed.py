"""What cannot be enforced exactly is rejected at compile, with the keyword and where."""

from __future__ import annotations

from typing import Any

import pytest

from vlmserve.structured import StructuredBackend, StructuredOutputError
from vlmserve.types import StructuredOutputsParams


def _error(backend: StructuredBackend, **kwargs: Any) -> StructuredOutputError:
    with pytest.raises(StructuredOutputError) as info:
        backend.compile(StructuredOutputsParams(**kwargs))
    return info.value


@pytest.mark.parametrize(
    ("schema", "keyword", "path"),
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems", "/uniqueItems"),
        (
            {
                "type": "object",
                "properties": {"tags": {"type": "array", "contains": {"type": "integer"}}},
            },
            "contains",
            "/properties/tags/contains",
        ),
        (
            {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
            "not",
            "/properties/a/not",
        ),
        ({"if": {"type": "string"}, "then": {"minLength": 2}}, "if", "/if"),
        (
            {"type": "object", "dependentRequired": {"a": ["b"]}},
            "dependentRequired",
            "/dependentRequired",
        ),
        (
            {
                "$defs": {"x": {"type": "object", "propertyNames": {"pattern": "^a"}}},
                "$ref": "#/$defs/x",
            },
            "propertyNames",
            "/$defs/x/propertyNames",
        ),
        ({"type": "string", "format": "credit-card"}, "format", "/format"),
        (
            {"oneOf": [{"type": "string"}, {"type": "string", "minLength": 3}]},
            "oneOf",
            "/oneOf",
        ),
        ({"$ref": "#/$defs/missing"}, "$ref", "/$ref"),
        ({"type": "string", "pattern": "(?<=a)b"}, "pattern", "/pattern"),
        (
            {"type": "object", "minProperties": 3, "required": ["a"]},
            "minProperties",
            "/minProperties",
        ),
        ({"type": "object", "x-guidance": {"lenient": True}}, "x-guidance", "/x-guidance"),
    ],
)
def test_unenforceable_schema_keywords(
    backend: StructuredBackend, schema: dict[str, Any], keyword: str, path: str
) -> None:
    error = _error(backend, json=schema)
    assert error.param == "structured_outputs.json"
    assert error.keyword == keyword
    assert error.path == path
    assert keyword in str(error) and path in str(error)


def test_non_strict_still_rejects(backend: StructuredBackend) -> None:
    error = _error(backend, json={"type": "array", "uniqueItems": True}, strict=False)
    assert error.keyword == "uniqueItems"
    # Extra keys are not forced unique by llguidance; a repeated key collapses when parsed,
    # so a minProperties count that relies on them could come out short.
    error = _error(backend, json={"type": "object", "minProperties": 2}, strict=False)
    assert (error.keyword, error.path) == ("minProperties", "/minProperties")


def test_uniqueitems_false_is_a_noop_not_an_error(backend: StructuredBackend) -> None:
    backend.compile(StructuredOutputsParams(json={"type": "array", "uniqueItems": False}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json": "{not json"}, "not valid JSON"),
        ({"json": "[1, 2]"}, "must be a JSON schema object"),
        ({"json": {"type": "objectt"}}, "'type'"),
        ({"json": {"type": "integer", "minimum": 5, "maximum": 2}}, "minimum"),
        ({"choice": []}, "non-empty list of strings"),
        ({"choice": ["a", 3]}, "non-empty list of strings"),
        ({"regex": "[a-"}, "unclosed character class"),
        ({"grammar": "start: foo"}, "foo"),
        ({"grammar": "   "}, "is empty"),
        ({"grammar": 'start: "a" <|im_start|> "b"'}, "unknown special token"),
        ({"grammar": 'start: "a" <[100]>'}, "'<['"),
        ({"grammar": "start: x\nx[max_tokens=3]: /[a-z]+/"}, "max_tokens"),
        ({"grammar": '%llguidance {"allow_invalid_utf8": true}\nstart: "a"'}, "%llguidance"),
        ({"structural_tag": {}}, "non-empty object"),
        ({"structural_tag": "null"}, "non-empty object"),
        ({"structural_tag": {"type": "tags", "structures": []}}, "unsupported type 'tags'"),
        (
            {"structural_tag": {"type": "structural_tag", "structures": [], "triggers": ["<f"]}},
            "structures must be a non-empty list",
        ),
        (
            {
                "structural_tag": {
                    "structures": [{"begin": "<a>", "schema": {}, "end": "</a>"}],
                    "triggers": [],
                }
            },
            "triggers must be a non-empty list",
        ),
        (
            {
                "structural_tag": {
                    "structures": [{"begin": "<a>", "schema": {}, "end": "</a>"}],
                    "triggers": ["<b"],
                }
            },
            "starts with none of the triggers",
        ),
        (
            {
                "structural_tag": {
                    "structures": [
                        {
                            "begin": "<a>",
                            "schema": {"type": "array", "uniqueItems": True},
                            "end": "</a>",
                        }
                    ],
                    "triggers": ["<a"],
                }
            },
            "structures[0].schema: unsupported or invalid schema keyword 'uniqueItems'",
        ),
    ],
)
def test_invalid_constraints(
    backend: StructuredBackend, kwargs: dict[str, Any], message: str
) -> None:
    assert message in str(_error(backend, **kwargs))


def test_no_or_several_constraint_kinds(backend: StructuredBackend) -> None:
    for params in (StructuredOutputsParams(), StructuredOutputsParams(regex="a", choice=["a"])):
        with pytest.raises(StructuredOutputError, match="exactly one of"):
            backend.compile(params)


def test_budget_too_small_for_the_shortest_output(backend: StructuredBackend) -> None:
    compiled = backend.compile(
        StructuredOutputsParams(
            json={
                "type": "object",
                "properties": {"answer": {"type": "string"}},
                "required": ["answer"],
            }
        )
    )
    shortest = backend.min_output_tokens(compiled)
    backend.new_request(compiled, shortest)
    with pytest.raises(StructuredOutputError, match=f"needs {shortest} tokens") as info:
        backend.new_request(compiled, shortest - 1)
    assert info.value.param == "max_tokens"


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize("depth", [129, 900, 20_000])
def test_schema_depth_is_bounded_before_any_recursive_walk(
    backend: StructuredBackend, depth: int
) -> None:
    # 900 was a RecursionError in copy.deepcopy; at 20,000 json.dumps (the cache key) was.
    error = _error(backend, json=_nested(depth), strict=True)
    assert error.param == "structured_outputs.json"
    assert "nests deeper than 128 levels" in str(error)
    assert error.path is not None and error.path.startswith("/items/items")


def test_schema_size_is_bounded(backend: StructuredBackend) -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(60_000)}}
    error = _error(backend, json=schema)
    assert "more than 100000 JSON values" in str(error)
    assert backend.compile(StructuredOutputsParams(json=_nested(60))).kind == "json"
