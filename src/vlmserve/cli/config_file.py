"""`vlmserve serve --config FILE`: the file's values become the flags' defaults, checked
as the same flags on the command line would be (the environment's `VLMSERVE_*` variables,
cli/config_env.py, override them; the command line overrides both)."""

from __future__ import annotations

import argparse
from typing import Any

from vlmserve.cli.help import CommaList, json_object


def _scalar(action: argparse.Action, where: str, value: Any) -> Any:
    if value is None and action.default is None:
        return None  # `key: null`: unset, as the flag's default (--print-config writes it)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric and callable(action.type) and not isinstance(action.type, type):
        value = str(value)  # a plain number for a parsed flag (sizes, durations): as typed
    if isinstance(value, str) and callable(action.type):
        try:  # the same parsing as on the command line
            return action.type(value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            problem = str(exc)
            if action.type in (int, float):  # argparse's words, not int()'s
                problem = f"invalid {action.type.__name__} value: {value!r}"
            raise ValueError(f"{where}: {problem}") from None
    if action.type is json_object:
        expected: type = dict
    elif isinstance(action.type, type):
        expected = action.type
    elif action.default is not None and not isinstance(action.default, list):
        expected = type(action.default)
    else:
        expected = str
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise ValueError(f"{where} must be {expected.__name__}, got {value!r}")
    return value


def config_value(action: argparse.Action, where: str, value: Any) -> Any:
    """`value` for `action` from a file or the environment (`where` names it in errors:
    "config key 'port'", "VLMSERVE_PORT")."""
    if isinstance(action, CommaList):
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r}")
        try:
            return [v for item in value for v in action.parse(str(item))]
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return _scalar(action, where, value)


def check_choice(action: argparse.Action, value: Any) -> None:
    # argparse checks choices on the command line only, never in defaults.
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ValueError(f"invalid choice {value!r} (choose from {choices})")


def file_settings(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The file's values by flag destination, parsed and checked."""
    from vlmserve.api.server_config import load_config_file

    skip = ("help", "config", "version")
    actions = {a.dest: a for a in parser._actions if a.dest not in skip}
    values = load_config_file(path)
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"unknown keys in {path}: {unknown}; known: {sorted(actions)}")
    settings = {}
    for key, value in values.items():
        settings[key] = config_value(actions[key], f"config key {key!r}", value)
        try:
            check_choice(actions[key], settings[key])
        except ValueError as exc:
            raise ValueError(f"config key {key!r}: {exc}") from None
    return settings
