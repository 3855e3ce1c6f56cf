"""Judging one raw model answer against a policy, without rescuing it: strict JSON parsing
of the content exactly as received, the policy's schema, the class enum, and flags that say
*how* an answer is broken (markdown fences, extra or missing fields) — including whether
stripping fences would have recovered it, reported apart and never counted as valid."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from vlmserve.safety.policy import Policy

_FENCED = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)
# C0 controls that JSON never allows raw (inside a string they must be escaped; between
# tokens only tab, LF and CR are whitespace): a grammar engine that lets them through
# produces answers no strict parser accepts.
_RAW_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


class _StrictJSONError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _StrictJSONError(f"{name} is not JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _StrictJSONError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def strict_loads(text: str) -> Any:
    """`json.loads` without Python's extensions (NaN, Infinity) and with duplicate keys
    refused: what a strict client in another language would accept."""
    try:
        return json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at char {exc.pos} of {len(text)})") from None
    except _StrictJSONError as exc:
        raise ValueError(f"not strict JSON ({exc})") from None


@dataclass
class AnswerCheck:
    json_ok: bool = False  # the raw content parses as strict JSON
    schema_ok: bool = False  # ... and validates against the policy's output schema
    enum_ok: bool = False  # best_class is one of the policy's classes
    best_class: str | None = None  # as answered (a string), even when not a policy class
    fenced: bool = False  # wrapped in markdown code fences
    recoverable: bool = False  # invalid as sent, valid once the fences are stripped
    extra_fields: list[str] = field(default_factory=list)
    missing_fields: list[str] = field(default_factory=list)
    control_chars: bool = False  # raw control characters (never valid JSON)
    problem: str | None = None  # the first reason it is not valid; None when valid
    answer: dict[str, Any] | None = None  # the parsed object when valid

    @property
    def valid(self) -> bool:
        return self.json_ok and self.schema_ok

    @property
    def label(self) -> str | None:
        """The class to count: only a valid answer has one (never rescued)."""
        return self.best_class if self.valid else None


def check_answer(content: str | None, policy: Policy) -> AnswerCheck:
    check = AnswerCheck()
    if content is None:
        check.problem = "no content"
        return check
    fence = _FENCED.match(content)
    check.fenced = fence is not None
    check.control_chars = _RAW_CONTROL.search(content) is not None
    try:
        value = strict_loads(content)
    except ValueError as exc:
        check.problem = str(exc)
        if fence is not None:
            inner = _loads_or_none(fence.group(1))
            _describe(inner, policy, check)
            check.recoverable = inner is not None and policy.validator.is_valid(inner)
        return check
    check.json_ok = True
    _describe(value, policy, check)
    error = jsonschema.exceptions.best_match(policy.validator.iter_errors(value))
    if error is None:
        check.schema_ok = True
        check.answer = value
    else:
        path = "/".join(map(str, error.absolute_path))
        check.problem = f"schema: {error.validator} at /{path}: {error.message}"[:300]
    return check


def _describe(value: Any, policy: Policy, check: AnswerCheck) -> None:
    """Fill the field flags from whatever object was parsed (raw or inside fences)."""
    if not isinstance(value, dict):
        return
    expected = list(policy.output_schema()["properties"])
    check.extra_fields = [k for k in value if k not in expected]
    check.missing_fields = [k for k in expected if k not in value]
    best = value.get("best_class")
    if isinstance(best, str):
        check.best_class = best
        check.enum_ok = best in policy.class_names


def _loads_or_none(text: str) -> Any:
    try:
        return strict_loads(text)
    except ValueError:
        return None
