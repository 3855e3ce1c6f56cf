"""Content-safety policies: the file format (YAML or JSON), its loader and validator, the
strict output schema and system prompt derived from it, and the hash that identifies results
made under it. The default policy ships next to this module (`default_policy.yaml`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.yaml")
STANDARD_FIELDS = ("best_class", "explanation", "extracted_text", "language")
_CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TOP_KEYS = {
    "name": True,
    "instructions": True,
    "user_prompt": True,
    "default_class": True,
    "classes": True,
    "max_lengths": False,
    "schema_extensions": False,
    "calibration": False,
}
_DEFAULT_MAX_LENGTHS = {"explanation": 300, "extracted_text": 300, "language": 16}
DEFAULT_THRESHOLD = 0.5


_Fail = Callable[[str, str], "PolicyError"]


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class PolicyClass:
    name: str
    definition: str
    threshold: float | None  # None only for the default class, which is never flagged


@dataclass(frozen=True)
class Policy:
    name: str
    instructions: str
    user_prompt: str
    default_class: str
    classes: tuple[PolicyClass, ...]
    max_lengths: Mapping[str, int]  # explanation, extracted_text, language
    schema_extensions: Mapping[str, Any]  # extra required output fields, in order
    temperature: float = 1.0  # calibration: class scores are softmax(log p / temperature)
    source: str = dataclasses.field(default="<memory>", compare=False)  # not part of the hash

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def issue_classes(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes if c.name != self.default_class)

    def to_dict(self) -> dict[str, Any]:
        """The policy as the file format writes it, defaults filled in."""
        classes = []
        for c in self.classes:
            entry: dict[str, Any] = {"name": c.name, "definition": c.definition}
            if c.threshold is not None:
                entry["threshold"] = c.threshold
            classes.append(entry)
        return {
            "name": self.name,
            "instructions": self.instructions,
            "user_prompt": self.user_prompt,
            "default_class": self.default_class,
            "classes": classes,
            "max_lengths": dict(self.max_lengths),
            "schema_extensions": json.loads(json.dumps(self.schema_extensions)),
            "calibration": {"temperature": self.temperature},
        }

    @cached_property
    def hash(self) -> str:
        """sha256 of the canonical JSON of `to_dict()`: equal policies hash equal however
        their files were laid out (key order, YAML or JSON, comments)."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()

    def output_schema(self, only_class: str | None = None) -> dict[str, Any]:
        """The strict schema of an answer: `best_class` first, no other fields allowed.
        `only_class` narrows `best_class` to that one class (the class is decided by the
        scoring pass; the model then writes the rest of the answer for it)."""
        classes = list(self.class_names) if only_class is None else [only_class]
        properties: dict[str, Any] = {
            "best_class": {"type": "string", "enum": classes},
            **{
                name: {"type": "string", "maxLength": self.max_lengths[name]}
                for name in STANDARD_FIELDS[1:]
            },
            **json.loads(json.dumps(self.schema_extensions)),
        }
        return {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }

    @cached_property
    def validator(self) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(self.output_schema())

    def system_prompt(self) -> str:
        lines = [self.instructions.rstrip(), "", "Classes:"]
        lines += [f"- {c.name}: {c.definition}" for c in self.classes]
        if self.schema_extensions:
            lines += ["", "Also fill these fields, after the ones above:"]
            for name, schema in self.schema_extensions.items():
                described = schema.get("description") if isinstance(schema, dict) else None
                lines.append(f'- "{name}"' + (f": {described}" if described else ""))
        return "\n".join(lines)

    def messages(
        self, parts: list[dict[str, Any]], instruction: str | None = None
    ) -> list[dict[str, Any]]:
        """The chat that classifies `parts` (OpenAI content parts: the image, or text to
        classify), in order, followed by the user prompt (and `instruction`, appended to it)."""
        prompt = self.user_prompt if instruction is None else f"{self.user_prompt} {instruction}"
        if parts and parts[-1].get("type") == "text":
            prompt = "\n\n" + prompt  # the template joins text parts as they are
        return [
            {"role": "system", "content": self.system_prompt()},
            {"role": "user", "content": [*parts, {"type": "text", "text": prompt}]},
        ]

    def with_temperature(self, temperature: float) -> Policy:
        try:
            return dataclasses.replace(self, temperature=_temperature(temperature))
        except ValueError as exc:
            raise PolicyError(f"temperature {exc}") from None

    def dump(self, path: str | Path) -> None:
        """Write the policy as YAML (or JSON for a .json path); `load_policy` reads it back
        equal, with the same hash."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix == ".json":
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        else:
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
        path.write_text(text, encoding="utf-8")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy in `path` (YAML, or JSON for .json), or the default policy."""
    path = Path(path) if path is not None else DEFAULT_POLICY_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy file {path}: cannot be read: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PolicyError(f"policy file {path}: does not parse: {exc}") from exc
    return policy_from_dict(data, str(path))


def policy_from_dict(data: Any, source: str = "<memory>") -> Policy:
    """Validate a parsed policy; every error names `source` and the key as written."""

    def fail(key: str, problem: str) -> PolicyError:
        return PolicyError(f"policy file {source}: {key}: {problem}")

    if not isinstance(data, dict):
        raise PolicyError(f"policy file {source}: must hold a mapping, got {_kind(data)}")
    unknown = sorted(set(map(str, data)) - set(_TOP_KEYS))
    if unknown:
        raise fail(unknown[0], f"unknown key; known keys: {', '.join(_TOP_KEYS)}")
    for key, required in _TOP_KEYS.items():
        if required and key not in data:
            raise fail(key, "missing")
    texts = {}
    for key in ("name", "instructions", "user_prompt", "default_class"):
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            raise fail(key, f"must be a non-empty string, got {value!r}")
        texts[key] = value
    classes = _classes(data["classes"], texts["default_class"], fail)
    max_lengths = _max_lengths(data.get("max_lengths", {}), fail)
    extensions = _extensions(data.get("schema_extensions", {}), fail)
    calibration = data.get("calibration", {})
    if not isinstance(calibration, dict) or set(calibration) - {"temperature"}:
        raise fail("calibration", f"must be a mapping with only 'temperature', got {calibration!r}")
    try:
        temperature = _temperature(calibration.get("temperature", 1.0))
    except ValueError as exc:
        raise fail("calibration.temperature", str(exc)) from None
    return Policy(
        name=texts["name"],
        instructions=texts["instructions"],
        user_prompt=texts["user_prompt"],
        default_class=texts["default_class"],
        classes=classes,
        max_lengths=max_lengths,
        schema_extensions=extensions,
        temperature=temperature,
        source=source,
    )


def _classes(raw: Any, default_class: str, fail: _Fail) -> tuple[PolicyClass, ...]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise fail("classes", f"must be a list of at least two classes, got {_kind(raw)}")
    classes: list[PolicyClass] = []
    for i, entry in enumerate(raw):
        key = f"classes[{i}]"
        if not isinstance(entry, dict):
            raise fail(key, f"must be a mapping with name and definition, got {_kind(entry)}")
        unknown = sorted(set(map(str, entry)) - {"name", "definition", "threshold"})
        if unknown:
            raise fail(f"{key}.{unknown[0]}", "unknown key; known: name, definition, threshold")
        name = entry.get("name")
        if not isinstance(name, str) or not _CLASS_NAME.match(name):
            raise fail(f"{key}.name", f"must match {_CLASS_NAME.pattern}, got {name!r}")
        if name in (c.name for c in classes):
            raise fail(f"{key}.name", f"{name!r} appears twice")
        definition = entry.get("definition")
        if not isinstance(definition, str) or not definition.strip():
            raise fail(f"{key}.definition", f"must be a non-empty string, got {definition!r}")
        threshold = entry.get("threshold")
        if name == default_class:
            if threshold is not None:
                raise fail(f"{key}.threshold", f"the default class {name!r} is never flagged")
        else:
            if threshold is None:
                threshold = DEFAULT_THRESHOLD
            if not _is_number(threshold) or not 0 <= threshold <= 1:
                raise fail(f"{key}.threshold", f"must be a number from 0 to 1, got {threshold!r}")
            threshold = float(threshold)
        classes.append(PolicyClass(name, definition, threshold))
    if default_class not in (c.name for c in classes):
        raise fail("default_class", f"{default_class!r} is not one of the classes")
    return tuple(classes)


def _max_lengths(raw: Any, fail: _Fail) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise fail("max_lengths", f"must be a mapping, got {_kind(raw)}")
    unknown = sorted(set(map(str, raw)) - set(_DEFAULT_MAX_LENGTHS))
    if unknown:
        raise fail(f"max_lengths.{unknown[0]}", f"unknown field; known: {STANDARD_FIELDS[1:]}")
    lengths = {**_DEFAULT_MAX_LENGTHS, **raw}
    for name, value in lengths.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100_000:
            raise fail(f"max_lengths.{name}", f"must be an integer from 0 to 100000, got {value!r}")
    return lengths


def _extensions(raw: Any, fail: _Fail) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise fail(
            "schema_extensions", f"must be a mapping of field name to schema, got {_kind(raw)}"
        )
    for name, schema in raw.items():
        key = f"schema_extensions.{name}"
        if name in STANDARD_FIELDS:
            raise fail(key, "is a standard field; extensions add new fields only")
        if not isinstance(name, str) or not _CLASS_NAME.match(name):
            raise fail(key, f"field names must match {_CLASS_NAME.pattern}")
        if not isinstance(schema, dict):
            raise fail(key, f"must be a JSON Schema object, got {_kind(schema)}")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise fail(key, f"not a valid JSON Schema: {exc.message}") from None
    return dict(raw)


def _temperature(value: Any) -> float:
    if not _is_number(value) or not value > 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
