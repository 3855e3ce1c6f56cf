"""The policy file: the default loads and yields the strict schema; its hash ignores layout
but not content; every bad file is refused naming the file and the key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from vlmserve.safety.policy import (
    DEFAULT_POLICY_PATH,
    PolicyError,
    canonical_json,
    load_policy,
    policy_from_dict,
)

CLASSES = ["alcohol", "tobacco", "guns_weapons", "profanity", "violence", "no_issues"]


def _default_dict() -> dict:
    return yaml.safe_load(DEFAULT_POLICY_PATH.read_text())


def test_default_policy_schema() -> None:
    policy = load_policy()
    assert policy.class_names == tuple(CLASSES) and policy.default_class == "no_issues"
    schema = policy.output_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert list(schema["properties"]) == ["best_class", "explanation", "extracted_text", "language"]
    assert schema["required"] == list(schema["properties"])
    assert schema["additionalProperties"] is False
    assert schema["properties"]["best_class"]["enum"] == CLASSES
    good = {
        "best_class": "alcohol",
        "explanation": "a beer sign",
        "extracted_text": "BEER",
        "language": "en",
    }
    assert policy.validator.is_valid(good)
    assert not policy.validator.is_valid({**good, "best_class": "drugs"})
    assert not policy.validator.is_valid({**good, "confidence": 0.9})
    prompt = policy.system_prompt()
    assert all(f"- {name}: " in prompt for name in CLASSES)
    assert [c.threshold for c in policy.classes] == [0.5] * 5 + [None]


def test_hash_is_canonical_json_and_ignores_layout(tmp_path: Path) -> None:
    policy = load_policy()
    expected = hashlib.sha256(canonical_json(policy.to_dict()).encode()).hexdigest()
    assert policy.hash == expected
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps(dict(reversed(list(_default_dict().items())))))
    assert load_policy(as_json).hash == policy.hash  # key order and format do not matter
    edited = _default_dict()
    edited["classes"][0]["definition"] += " (beer included)"
    assert policy_from_dict(edited).hash != policy.hash


def test_dump_round_trips_with_a_temperature(tmp_path: Path) -> None:
    policy = load_policy().with_temperature(1.7)
    for name in ("copy.yaml", "copy.json"):
        policy.dump(tmp_path / name)
        again = load_policy(tmp_path / name)
        assert again == policy and again.hash == policy.hash and again.temperature == 1.7
    assert policy.hash != load_policy().hash
    with pytest.raises(PolicyError, match="temperature"):
        policy.with_temperature(0)


def test_schema_extensions_follow_the_standard_fields() -> None:
    data = _default_dict()
    data["schema_extensions"] = {
        "brand": {"type": "string", "maxLength": 20, "description": "the brand shown"}
    }
    policy = policy_from_dict(data)
    schema = policy.output_schema()
    assert list(schema["properties"])[-1] == "brand" and "brand" in schema["required"]
    assert '"brand": the brand shown' in policy.system_prompt()


def _edit(path: str, value: object) -> dict:
    data = _default_dict()
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("colour", "blue", "colour: unknown key"),
        ("instructions", _DELETE, "instructions: missing"),
        ("user_prompt", "", "user_prompt: must be a non-empty string"),
        ("default_class", "fine", "default_class: 'fine' is not one of the classes"),
        (
            "classes",
            [{"name": "only", "definition": "x"}],
            "classes: must be a list of at least two",
        ),
        ("classes.1.name", "alcohol", "classes[1].name: 'alcohol' appears twice"),
        ("classes.2.name", "Guns Weapons", "classes[2].name: must match"),
        ("classes.0.definition", " ", "classes[0].definition: must be a non-empty string"),
        ("classes.0.threshold", "high", "classes[0].threshold: must be a number from 0 to 1"),
        ("classes.3.threshold", 1.5, "classes[3].threshold: must be a number from 0 to 1"),
        (
            "classes.5.threshold",
            0.5,
            "classes[5].threshold: the default class 'no_issues' is never flagged",
        ),
        ("classes.0.weight", 2, "classes[0].weight: unknown key"),
        ("max_lengths.explanation", -1, "max_lengths.explanation: must be an integer"),
        ("max_lengths.summary", 10, "max_lengths.summary: unknown field"),
        (
            "schema_extensions",
            {"best_class": {}},
            "schema_extensions.best_class: is a standard field",
        ),
        ("schema_extensions", {"n": {"type": 3}}, "schema_extensions.n: not a valid JSON Schema"),
        ("calibration.temperature", 0, "calibration.temperature: must be a positive number"),
    ],
)
def test_bad_policy_names_file_and_key(tmp_path: Path, path: str, value: object, key: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(_edit(path, value)))
    with pytest.raises(PolicyError) as error:
        load_policy(file)
    assert str(error.value).startswith(f"policy file {file}: {key}"), str(error.value)


def test_unreadable_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"missing\.yaml: cannot be read"):
        load_policy(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(PolicyError, match=r"broken\.yaml: does not parse"):
        load_policy(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(PolicyError, match=r"list\.json: must hold a mapping"):
        load_policy(listed)
