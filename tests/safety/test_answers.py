"""Answer checks never rescue: fenced JSON is invalid (and flagged recoverable), Python's JSON
extensions are refused, extra/missing fields and unknown classes are named."""

from __future__ import annotations

import json

import pytest

from vlmserve.safety.answers import check_answer, strict_loads
from vlmserve.safety.policy import load_policy

POLICY = load_policy()
GOOD = {
    "best_class": "alcohol",
    "explanation": "beer sign",
    "extracted_text": "BEER",
    "language": "en",
}


def test_valid_answer() -> None:
    check = check_answer(json.dumps(GOOD), POLICY)
    assert check.valid and check.enum_ok and check.label == "alcohol" and check.answer == GOOD
    assert (check.fenced, check.recoverable, check.problem) == (False, False, None)


def test_fenced_json_is_invalid_but_recoverable() -> None:
    check = check_answer(f"```json\n{json.dumps(GOOD)}\n```", POLICY)
    assert not check.valid and not check.json_ok and check.label is None
    assert check.fenced and check.recoverable and check.best_class == "alcohol"
    assert check.problem is not None and check.problem.startswith("not JSON")


def test_fenced_invalid_json_is_not_recoverable() -> None:
    check = check_answer(f"```\n{json.dumps({**GOOD, 'severity': 'high'})}\n```", POLICY)
    assert check.fenced and not check.recoverable and check.extra_fields == ["severity"]


def test_field_and_enum_flags() -> None:
    extra = check_answer(json.dumps({**GOOD, "confidence": 0.9, "severity": "low"}), POLICY)
    assert (
        extra.json_ok and not extra.schema_ok and extra.extra_fields == ["confidence", "severity"]
    )
    missing = check_answer(json.dumps({"best_class": "no_issues"}), POLICY)
    assert missing.missing_fields == ["explanation", "extracted_text", "language"]
    invented = check_answer(json.dumps({**GOOD, "best_class": "drugs"}), POLICY)
    assert not invented.valid and not invented.enum_ok and invented.best_class == "drugs"
    assert invented.label is None and "enum" in (invented.problem or "")
    long = check_answer(json.dumps({**GOOD, "explanation": "x" * 301}), POLICY)
    assert not long.valid and "maxLength" in (long.problem or "")


@pytest.mark.parametrize(
    "text", ['{"a": NaN}', '{"a": Infinity}', '{"a": 1, "a": 2}', "{'a': 1}", "", "a poem"]
)
def test_strict_json(text: str) -> None:
    with pytest.raises(ValueError, match="JSON"):
        strict_loads(text)
    assert not check_answer(text, POLICY).json_ok


def test_raw_control_characters_are_flagged() -> None:
    """What vLLM's CPU build answers under a schema with maxLength strings (the peer's README):
    JSON-shaped, but with raw control characters inside a string."""
    raw = json.dumps(GOOD).replace("beer sign", "beer\x01sign\x14")
    check = check_answer(raw, POLICY)
    assert not check.valid and check.control_chars and "control character" in (check.problem or "")
    escaped = check_answer(json.dumps({**GOOD, "explanation": "a\x01b\n"}), POLICY)
    assert escaped.valid and not escaped.control_chars  # escaped as \u0001: valid JSON
    assert not check_answer(json.dumps(GOOD, indent="\t"), POLICY).control_chars


def test_no_content() -> None:
    assert check_answer(None, POLICY).problem == "no content"
