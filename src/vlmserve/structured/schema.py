"""JSON schema preparation: parsing, strict-mode rewriting and fail-closed diagnostics.

llguidance enforces the schema it is given and reports unimplemented keywords (we never turn
on its `lenient` mode), but it does not say *where* a keyword sits. This module owns the walk
over a schema's subschemas that turns those reports into errors naming the keyword and its
JSON pointer, the few checks llguidance does not make, and the strict-mode rewrite.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from vlmserve.structured.errors import StructuredOutputError

# Keywords whose value is a map of name -> subschema, a list of subschemas, or one subschema.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SCHEMA_SINGLE = (
    "items",
    "additionalProperties",
    "additionalItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
)
# Applicators that merge a node with other subschemas: narrowing one side of a merge (strict
# mode's additionalProperties=false) could make a satisfiable schema unsatisfiable.
_MERGING = ("allOf", "$ref")
# Bounds on a schema's JSON, checked before anything walks it: the walks below, copy.deepcopy,
# json.dumps and llguidance's conversion all recurse (a 900-deep schema was a RecursionError
# in deepcopy; 20,000 levels overflow llguidance's stack, a segfault). 128 levels hold 64
# nested object schemas.
MAX_SCHEMA_DEPTH = 128
MAX_SCHEMA_VALUES = 100_000


def load_schema(value: dict[str, Any] | str, param: str) -> dict[str, Any]:
    """Parse a schema given as a dict or a JSON string; it must be a JSON object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StructuredOutputError(f"{param} is not valid JSON: {exc}", param=param) from exc
    if not isinstance(value, dict):
        raise StructuredOutputError(
            f"{param} must be a JSON schema object, got {type(value).__name__}", param=param
        )
    check_bounds(value, param)
    if "x-guidance" in value:
        # Those options (lenient, separators, whitespace) would override our enforcement.
        raise StructuredOutputError(
            f"{param}: the 'x-guidance' keyword at '/x-guidance' is not accepted",
            param=param,
            keyword="x-guidance",
            path="/x-guidance",
        )
    return value


def check_bounds(schema: dict[str, Any], param: str) -> None:
    """StructuredOutputError if the schema nests deeper than MAX_SCHEMA_DEPTH or holds more
    than MAX_SCHEMA_VALUES JSON values. Iterative, so any depth is safe to check."""
    stack: list[tuple[Any, str, int]] = [(schema, "", 0)]
    count = 0
    while stack:
        node, path, depth = stack.pop()
        count += 1
        if count > MAX_SCHEMA_VALUES:
            raise StructuredOutputError(
                f"{param}: the schema holds more than {MAX_SCHEMA_VALUES} JSON values",
                param=param,
            )
        if depth > MAX_SCHEMA_DEPTH:
            shown = "/".join(path.split("/")[:9])  # the first levels say where
            raise StructuredOutputError(
                f"{param}: the schema nests deeper than {MAX_SCHEMA_DEPTH} levels "
                f"(at '{shown}/...')",
                param=param,
                path=shown,
            )
        if isinstance(node, dict):
            stack.extend((v, _pointer(path, k), depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, _pointer(path, i), depth + 1) for i, v in enumerate(node))


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def iter_subschemas(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (JSON pointer, node) for the schema and every subschema below it."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key in _SCHEMA_MAPS:
        children = schema.get(key)
        if isinstance(children, dict):
            for name, child in children.items():
                yield from iter_subschemas(child, _pointer(_pointer(path, key), name))
    for key in _SCHEMA_LISTS:
        children = schema.get(key)
        if isinstance(children, list):
            for index, child in enumerate(children):
                yield from iter_subschemas(child, _pointer(_pointer(path, key), index))
    for key in _SCHEMA_SINGLE:
        yield from iter_subschemas(schema.get(key), _pointer(path, key))


def _is_object_schema(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node


def _under(path: str, roots: set[str]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def _merged_nodes(schema: dict[str, Any]) -> set[str]:
    """Pointers of nodes taking part in a merge: allOf members, $ref targets and nodes that
    carry a merging applicator themselves, closed over the local refs they reach."""
    merged: set[str] = set()
    for path, node in iter_subschemas(schema):
        merges = any(key in node for key in _MERGING)
        # anyOf/oneOf next to object keywords is a merge of each branch with its parent.
        if merges or (_is_object_schema(node) and ("anyOf" in node or "oneOf" in node)):
            merged.add(path)
            for key in ("allOf", "anyOf", "oneOf"):
                merged.update(f"{path}/{key}/{i}" for i in range(len(node.get(key) or [])))
    refs = {p: n["$ref"] for p, n in iter_subschemas(schema) if isinstance(n.get("$ref"), str)}
    while True:
        reached = {
            ref[1:] for path, ref in refs.items() if ref.startswith("#") and _under(path, merged)
        }
        if reached <= merged:
            return merged
        merged |= reached


def apply_strict(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI strict mode: an object schema that says nothing about extra keys gets none.

    Only ever narrows the schema, so output valid under the result is valid under the input.
    Nodes taking part in allOf/$ref merges are left alone: there `additionalProperties` only
    sees its own node's `properties` and would forbid the keys the other side requires.
    """
    strict = copy.deepcopy(schema)
    merged = _merged_nodes(strict)
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties")
    for path, node in iter_subschemas(strict):
        if _under(path, merged) or not _is_object_schema(node):
            continue
        declared = node.get("properties") or {}
        # A required key missing from `properties` is meant to come in as an extra key.
        undeclared = any(name not in declared for name in node.get("required") or [])
        if not undeclared and not any(key in node for key in open_keys):
            node["additionalProperties"] = False
    return strict


def drop_noop_keywords(schema: dict[str, Any]) -> dict[str, Any]:
    """Remove keywords that constrain nothing but that llguidance reports as unimplemented."""
    cleaned = copy.deepcopy(schema)
    for _, node in iter_subschemas(cleaned):
        if node.get("uniqueItems") is False:
            del node["uniqueItems"]
    return cleaned


def check_enforceable(schema: dict[str, Any], param: str) -> None:
    """Checks for constraints llguidance accepts but cannot guarantee after parsing."""
    for path, node in iter_subschemas(schema):
        minimum = node.get("minProperties")
        required = set(node.get("required") or [])
        extra_keys = (
            node.get("additionalProperties", True) is not False or "patternProperties" in node
        )
        if isinstance(minimum, int) and minimum > len(required) and extra_keys:
            # Extra keys are not forced unique, and a repeated key collapses when parsed.
            where = _pointer(path, "minProperties")
            raise StructuredOutputError(
                f"{param}: 'minProperties' beyond the required keys cannot be enforced "
                f"(extra keys may repeat) at '{where}'",
                param=param,
                keyword="minProperties",
                path=where,
            )


def _find_keyword(schema: dict[str, Any], keyword: str, value: Any = None) -> str | None:
    for path, node in iter_subschemas(schema):
        if keyword in node and (value is None or node[keyword] == value):
            return _pointer(path, keyword)
    return None


_LLG_PATTERNS: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"Unimplemented keys: \[\"([^\"]+)\""), None),
    (re.compile(r"Unsatisfiable schema: (\w+)"), None),
    (re.compile(r"Unknown format: (\S+)"), "format"),
    (re.compile(r"oneOf constraints are not supported"), "oneOf"),
    (re.compile(r"Pointer .* does not exist|external|remote", re.I), "$ref"),
    (re.compile(r"regex parse error|lookaround|look-around", re.I), "pattern"),
    (re.compile(r"Invalid type"), "type"),
]


def explain_llguidance_error(
    message: str, schema: dict[str, Any], param: str
) -> StructuredOutputError:
    """Turn llguidance's schema error into one naming the keyword and where it is."""
    first_line = message.strip().splitlines()[0] if message.strip() else message
    for pattern, keyword in _LLG_PATTERNS:
        match = pattern.search(message)
        if not match:
            continue
        value = None
        if keyword is None:
            keyword = match.group(1)
        elif keyword == "format" and match.groups():
            value = match.group(1)
        path = _find_keyword(schema, keyword, value)
        where = f" at '{path}'" if path else ""
        return StructuredOutputError(
            f"{param}: unsupported or invalid schema keyword '{keyword}'{where}: {first_line}",
            param=param,
            keyword=keyword,
            path=path,
        )
    return StructuredOutputError(f"{param}: invalid schema: {first_line}", param=param)
