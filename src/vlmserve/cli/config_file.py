"""`vlmserve serve --config FILE`: the file's values become the flags' defaults, checked
as the same flags on the command line would be."""

from __future__ import annotations

import argparse
from typing import Any

from vlmserve.cli.configs import fetch_timeout
from vlmserve.cli.help import CommaList, byte_size, json_object


def _scalar(action: argparse.Action, key: str, value: Any) -> Any:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if action.type in (fetch_timeout, byte_size) and numeric:
        value = str(value)  # a plain number, parsed as on the command line
    if isinstance(value, str) and callable(action.type):
        try:  # the same parsing as on the command line
            return action.type(value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ValueError(f"config key {key!r}: {exc}") from exc
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
        raise ValueError(f"config key {key!r} must be {expected.__name__}, got {value!r}")
    return value


def _value(action: argparse.Action, key: str, value: Any) -> Any:
    if isinstance(action, CommaList):
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list):
            raise ValueError(f"config key {key!r} must be a list, got {value!r}")
        try:
            return [v for item in value for v in action.parse(str(item))]
        except ValueError as exc:
            raise ValueError(f"config key {key!r}: {exc}") from None
    return _scalar(action, key, value)


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    from vlmserve.api.server_config import load_config_file

    skip = ("help", "config", "version")
    actions = {a.dest: a for a in parser._actions if a.dest not in skip}
    values = load_config_file(path)
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"unknown keys in {path}: {unknown}; known: {sorted(actions)}")
    # Flags given on the command line still win: the file only replaces the defaults.
    parser.set_defaults(**{k: _value(actions[k], k, v) for k, v in values.items()})
