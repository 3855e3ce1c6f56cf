"""What `--help` shows and how list and JSON flags read their values."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from typing import Any


def show_default(value: Any) -> str:
    """A default the way a user would type it: lists comma-separated, dicts as JSON,
    switches as on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ",".join(f"{v:g}" for v in dataclasses.astuple(value))
    return str(value)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B|i)?", re.IGNORECASE)


def byte_size(text: str) -> int:
    """A size as a number or with a binary suffix: 512, 64K, 32MiB, 8Mi, 1.5G."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (e.g. 1048576, 512KiB, 32MiB, 2G)"
        )
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMG".index(unit.upper() or "_"))


def duration(text: str) -> float:
    """Seconds as a number or a duration: 30, 1.5, 500ms, 30s, 5m, 1h30m."""
    from vlmserve.registry import SpecError, parse_keep_alive

    try:
        seconds = parse_keep_alive(text)
    except SpecError:
        seconds = -1.0
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30, 500ms, 5m, 1h30m)")
    return seconds


def keep_alive(text: str) -> float:
    """A duration, or -1 for never."""
    return -1.0 if text.strip() == "-1" else duration(text)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option shows its default. A flag whose default is None says in its own help
    what happens without it (a test checks that every flag does one or the other)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        said = "%(default)" in text or "(default" in text  # in the help's own words
        if said or action.default in (None, argparse.SUPPRESS):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, "*"):
            return text
        return f"{text} (default: %(default)s)"

    def _expand_help(self, action: argparse.Action) -> str:
        shown = copy.copy(action)
        if shown.default not in (None, argparse.SUPPRESS):
            shown.default = show_default(shown.default).replace("%", "%%")
        return super()._expand_help(shown)


class CommandParser(argparse.ArgumentParser):
    """A command's parser: shows every flag's default, whoever adds the command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class CommaList(argparse.Action):
    """A list flag that takes one argument per use, commas separating values:
    `--allowed-media-ports 80,443 --allowed-media-ports 8080` -> [80, 443, 8080].

    One argument, never `nargs='*'`: a greedy list would swallow the positional MODEL
    after it (`--allowed-media-domains img.example.com /models/X`). Given on the command
    line the values replace the default (or the config file's list); repeats add to them."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        item: Callable[[str], Any] = str,
        **kwargs: Any,
    ) -> None:
        self.item = item
        kwargs.setdefault("metavar", "A,B")
        super().__init__(option_strings, dest, **kwargs)

    def parse(self, text: str) -> list[Any]:
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise ValueError(f"empty value in {text!r}")
            try:
                values.append(self.item(part))
            except ValueError:
                raise ValueError(f"invalid value {part!r}") from None
        return values

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        so_far = [] if current is None or current is self.default else list(current)
        try:
            so_far.extend(self.parse(str(values)))
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, so_far)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


LIST_FLAG_HINT = (
    "list flags take one value each: repeat the flag or join the values with commas "
    "(--allowed-media-domains a.example.com,b.example.com); MODEL may come first"
)
