"""The top-level parser, `--version`, and the one place start-up failures become errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import vlmserve
from vlmserve.cli.config_env import config_path, env_settings
from vlmserve.cli.config_file import file_settings
from vlmserve.cli.errors import flag_names, in_flag_words
from vlmserve.cli.help import LIST_FLAG_HINT, CommaList, CommandParser, HelpFormatter
from vlmserve.cli.logs import FORMATS, LEVELS
from vlmserve.cli.models import add_models_parser
from vlmserve.cli.serve import add_serve_parser
from vlmserve.cli.tiny import add_tiny_parser, default_tiny_model
from vlmserve.safety import cli as safety_cli

DESCRIPTION = """\
vlmserve serves Qwen2-VL and Qwen2.5-VL vision-language models behind an OpenAI-compatible
HTTP API: chat with images and videos, streaming, and structured outputs (JSON schema,
regex, choice, grammar) that always parse, even when max_tokens cuts them short. It runs on
CPU and CUDA, and fetches media URLs under a deny-by-default policy for private networks.

Try it: `vlmserve serve` (a tiny random model, no download), then
  curl http://127.0.0.1:8000/v1/models
`vlmserve COMMAND --help` explains each command; docs/quickstart.md shows a first session."""

EXIT_USAGE = 2  # argparse's status for a bad command line; start-up failures share it
logger = logging.getLogger("vlmserve.cli")


def build_parser() -> argparse.ArgumentParser:
    return _parsers()[0]


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and its commands' parsers by name."""
    parser = argparse.ArgumentParser(
        prog="vlmserve", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"vlmserve {vlmserve.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        choices=LEVELS,
        default="info",
        help="vlmserve's and uvicorn's log level (other libraries: warnings and errors)",
    )
    common.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text: lines for people; json: one object per line (time, level, logger, "
        "message, request_id; access lines add method, route, status, latency_s, model, "
        "tokens)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
    )
    add_serve_parser(sub, common, HelpFormatter)
    add_tiny_parser(sub, common, HelpFormatter)
    add_models_parser(sub, common, HelpFormatter)
    safety_cli.add_parsers(sub, default_model=default_tiny_model)
    return parser, dict(sub.choices)


def parse_args(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """The command line; for `serve`, over the settings of its --config file and the
    `VLMSERVE_*` environment (cli/config_env.py), which replace the flags' defaults."""
    environ = os.environ if environ is None else environ
    parser, commands = _parsers()
    serve = commands["serve"]
    args = _parse(parser, serve, argv)
    if args.command != "serve":
        return args
    try:
        path = config_path(args, environ)
        settings = file_settings(serve, path) if path else {}
        settings.update(env_settings(serve, environ))
    except (OSError, ValueError, argparse.ArgumentTypeError) as exc:
        serve.error(str(exc))
    if settings:
        serve.set_defaults(**settings)
        args = _parse(parser, serve, argv)
    return args


def _parse(
    parser: argparse.ArgumentParser, serve: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    args, extra = parser.parse_known_args(argv)
    if extra:
        message = f"unrecognized arguments: {' '.join(extra)}"
        used = argv if argv is not None else sys.argv[1:]
        lists = {o for a in serve._actions if isinstance(a, CommaList) for o in a.option_strings}
        if any(arg in lists for arg in used):
            message += f" ({LIST_FLAG_HINT})"
        (serve if args.command == "serve" else parser).error(message)
    if args.command == "serve":
        _second_list_value_as_model(serve, args, argv if argv is not None else sys.argv[1:])
    return args


def _second_list_value_as_model(
    serve: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]
) -> None:
    """`--allowed-media-ports 80 8080` makes 8080 the MODEL. When that MODEL is no folder and
    no hub id (owner/name) either, it could only fail later, after the start-up log, as a
    missing model: say now that it was meant as a second value."""
    model = args.model
    if model is None or "/" in model or Path(model).exists():
        return
    lists = {o for a in serve._actions if isinstance(a, CommaList) for o in a.option_strings}
    for i in range(2, len(argv)):
        if argv[i] == model and argv[i - 2] in lists:
            serve.error(
                f"MODEL {model!r} is no model folder; it follows {argv[i - 2]} {argv[i - 1]}: "
                f"{LIST_FLAG_HINT}"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError) as exc:
        # A problem with the command line or the machine, not a bug: one line naming the
        # flag, like argparse's own errors (the traceback is there at --log-level debug).
        logger.debug("%s failed", args.command, exc_info=True)
        message = in_flag_words(str(exc), flag_names(_parsers()[1][args.command]))
        print(f"vlmserve {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
