"""JSON schemas the validity tests decode against: one feature (or one trap) each."""

from __future__ import annotations

from typing import Any

from vlmserve.safety.policy import load_policy

# The content-safety app's strict answer schema, from its default policy (the one source).
CONTENT_SAFETY: dict[str, Any] = load_policy().output_schema()


def _obj(required: bool = True, **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(properties)
    return schema


SCHEMAS: dict[str, dict[str, Any]] = {
    "content_safety": CONTENT_SAFETY,
    "nested_objects": _obj(
        user=_obj(
            name={"type": "string", "maxLength": 20},
            address=_obj(
                city={"type": "string", "maxLength": 15},
                zip={"type": "string", "pattern": "^[0-9]{5}$"},
            ),
        )
    ),
    "deeply_nested": _obj(
        a=_obj(
            b=_obj(c={"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1})
        )
    ),
    "array_min_max_items": {
        "type": "array",
        "items": {"type": "integer", "minimum": -5, "maximum": 5},
        "minItems": 2,
        "maxItems": 4,
    },
    "array_of_objects": {
        "type": "array",
        "minItems": 1,
        "maxItems": 3,
        "items": _obj(
            name={"type": "string"}, score={"type": "number", "minimum": 0, "maximum": 100}
        ),
    },
    "min_items_objects": {
        "type": "array",
        "minItems": 3,
        "items": _obj(
            id={"type": "integer", "minimum": 100},
            tag={"type": "string", "minLength": 5, "pattern": "^[a-z]+$"},
        ),
    },
    "nested_arrays": {
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        "minItems": 2,
        "maxItems": 3,
    },
    "prefix_items": {
        "type": "array",
        "prefixItems": [
            {"type": "string", "maxLength": 4},
            {"type": "integer"},
            {"type": "boolean"},
        ],
        "items": False,
        "minItems": 3,
    },
    "enum_mixed": {"enum": ["red", "green", 3, None, True]},
    "enum_escapes": {"enum": ['a"b', "c\\d", "line\nbreak", "tab\t"]},
    "enum_unicode": {"enum": ["café", "naïve", "日本"]},
    "const": _obj(version={"const": "v1"}, flag={"const": True}, meta={"const": {"k": [1, 2]}}),
    "any_of": {
        "anyOf": [{"type": "string", "maxLength": 5}, {"type": "integer"}, {"type": "null"}]
    },
    "one_of_disjoint": {
        "oneOf": [
            _obj(kind={"const": "a"}, x={"type": "integer"}),
            _obj(kind={"const": "b"}, y={"type": "string", "maxLength": 8}),
        ]
    },
    "all_of": {
        "allOf": [
            _obj(a={"type": "integer"}),
            {"properties": {"b": {"type": "string", "maxLength": 4}}, "required": ["b"]},
        ]
    },
    "ref_defs": {
        "$defs": {"point": _obj(x={"type": "number"}, y={"type": "number"})},
        **_obj(a={"$ref": "#/$defs/point"}, b={"$ref": "#/$defs/point"}),
    },
    "recursive_ref": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                },
                "required": ["value"],
            }
        },
        "$ref": "#/$defs/node",
    },
    "number_bounds": _obj(
        a={"type": "number", "minimum": -1.5, "maximum": 2.5},
        b={"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 20},
        c={"type": "number", "exclusiveMinimum": 0},
    ),
    "integer_narrow_range": {"type": "integer", "minimum": 1000000, "maximum": 1000005},
    "multiple_of": {"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 100},
    "number_free": {"type": "number"},
    "pattern": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3,5}$"},
    "formats": _obj(
        d={"type": "string", "format": "date"},
        dt={"type": "string", "format": "date-time"},
        t={"type": "string", "format": "time"},
        u={"type": "string", "format": "uuid"},
        ip={"type": "string", "format": "ipv4"},
        ip6={"type": "string", "format": "ipv6"},
        e={"type": "string", "format": "email"},
    ),
    "optional_properties": {
        **_obj(
            required=False,
            req={"type": "string", "maxLength": 10},
            opt1={"type": "integer"},
            opt2={"type": "boolean"},
        ),
        "required": ["req"],
    },
    "additional_properties_schema": {
        **_obj(id={"type": "integer"}),
        "additionalProperties": {"type": "string", "maxLength": 6},
    },
    "pattern_properties_map": {
        "type": "object",
        "patternProperties": {"^[a-z]+$": {"type": "integer"}},
        "additionalProperties": False,
        "maxProperties": 3,
    },
    "max_length_strings": _obj(
        s={"type": "string", "maxLength": 3}, t={"type": "string", "minLength": 2, "maxLength": 4}
    ),
    "min_length_string": {"type": "string", "minLength": 8, "maxLength": 12},
    "unbounded_string_small_budget": _obj(text={"type": "string"}, n={"type": "integer"}),
    "unbounded_strings_in_array": {"type": "array", "items": {"type": "string"}, "minItems": 2},
    "type_list": {"type": ["string", "null"], "maxLength": 5},
    "boolean": {"type": "boolean"},
    "tool_call": _obj(
        name={"const": "get_weather"},
        arguments=_obj(city={"type": "string"}, unit={"enum": ["c", "f"]}),
    ),
    "any_json": {},
}
