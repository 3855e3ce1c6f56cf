"""Output checks shared by the tests: JSON Schema validation with format checks that do not
depend on optional packages (RFC 3339 dates and times by regex, as the RFC defines them)."""

from __future__ import annotations

import re
from typing import Any

import jsonschema

_DATE = r"(\d{4})-(\d{2})-(\d{2})"
_TIME = r"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([zZ]|[+-]([01]\d|2[0-3]):[0-5]\d)"
_FORMATS = jsonschema.FormatChecker()


def _valid_date(text: str) -> bool:
    match = re.fullmatch(_DATE, text)
    if not match:
        return False
    year, month, day = (int(g) for g in match.groups())
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    return 1 <= month <= 12 and 1 <= day <= days[month - 1]


@_FORMATS.checks("date")
def _check_date(value: object) -> bool:
    return not isinstance(value, str) or _valid_date(value)


@_FORMATS.checks("time")
def _check_time(value: object) -> bool:
    return not isinstance(value, str) or re.fullmatch(_TIME, value) is not None


@_FORMATS.checks("date-time")
def _check_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    date, sep, time = value.partition("T") if "T" in value else value.partition("t")
    return bool(sep) and _valid_date(date) and re.fullmatch(_TIME, time) is not None


def validate(instance: Any, schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=_FORMATS).validate(instance)
