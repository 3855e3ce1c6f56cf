"""`vlmserve models register|list|load|unload|remove`: the admin API over HTTP, for a
running server (docs/registry.md). Needs the server's admin key (`--admin-key`, or
$VLMSERVE_ADMIN_KEY); `list` needs only a user key when the server has one."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vlmserve.cli.help import byte_size, json_object
from vlmserve.config import admin_key_from_env

DESCRIPTION = """\
Manage the models of a running `vlmserve serve` over its admin API: register one (stored
in the server's registry, loaded on its first request unless --load-now), list them with
their state and measured memory, load or unload one, remove one (its requests finish
first). The server must run with --admin-api-key; pass that key as --admin-key or in
$VLMSERVE_ADMIN_KEY."""

EPILOG = """\
examples:
  vlmserve models register qwen Qwen/Qwen2-VL-2B-Instruct --max-model-len 4096 --keep-alive 10m
  vlmserve models list
  vlmserve models load qwen --wait
  vlmserve models unload qwen
  vlmserve models remove qwen"""

EXIT_REFUSED = 1  # the server answered with an error, or could not be reached
TIMEOUT_S = 600.0  # `--wait` lasts as long as a load (the server bounds it: --load-timeout)


def add_models_parser(sub: Any, common: argparse.ArgumentParser, formatter: Any) -> None:
    models = sub.add_parser(
        "models",
        parents=[common],
        help="register, list, load, unload and remove a running server's models",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=formatter,
    )
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--base-url", default="http://127.0.0.1:8000", metavar="URL", help="the server"
    )
    client.add_argument(
        "--admin-key",
        metavar="KEY",
        help="the server's --admin-api-key (default: $VLMSERVE_ADMIN_KEY; list: the user key "
        "works too)",
    )
    client.add_argument("--json", action="store_true", help="print the server's JSON answer")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, parents=[client], help=text, description=text, formatter_class=formatter
        )
        return parser

    action("list", "the models with their state, requests in flight and memory")
    register = action("register", "register a model (metadata only unless --load-now)")
    register.add_argument("alias", metavar="ALIAS", help="the name clients put in 'model'")
    register.add_argument("model_name", metavar="MODEL", help="a model folder or hub id")
    _register_flags(register)
    load = action("load", "load a model now (and reset its failure back-off)")
    load.add_argument("alias", metavar="ALIAS", help="a registered model")
    load.add_argument("--wait", action="store_true", help="return once it is ready")
    for name, text in (
        ("unload", "unload a model (requests in flight finish first)"),
        ("remove", "forget a model (requests in flight finish first)"),
    ):
        action(name, text).add_argument("alias", metavar="ALIAS", help="a registered model")
    models.set_defaults(func=run_models)


def _register_flags(register: argparse.ArgumentParser) -> None:
    settings = register.add_argument_group("settings (default: the server's flags)")
    for flag, kind, metavar in (
        ("--max-model-len", int, "TOKENS"),
        ("--gpu-memory-utilization", float, "FRACTION"),
        ("--max-num-seqs", int, "N"),
        ("--dtype", str, "DTYPE"),
        ("--quantization", str, "METHOD"),
        ("--device", str, "DEVICE"),
        ("--kv-cache-memory-bytes", byte_size, "BYTES"),
        ("--limit-mm-per-prompt", json_object, "JSON"),
        ("--tokenizer", str, "FOLDER"),
        ("--max-waiting", int, "N"),
        ("--keep-alive", str, "DURATION"),
    ):
        settings.add_argument(flag, type=kind, metavar=metavar, help="as for `vlmserve serve`")
    settings.add_argument(
        "--chat-template", metavar="FILE", help="a Jinja chat template file to send"
    )
    settings.add_argument(
        "--pinned", action="store_true", help="load now and never unload it for idleness"
    )
    settings.add_argument(
        "--media",
        type=json_object,
        metavar="JSON",
        help="media policy overrides, narrower than the server's, e.g. "
        '\'{"allowed_media_domains": ["*.example.com"], "max_image_pixels": 4000000}\'',
    )
    register.add_argument("--load-now", action="store_true", help="start loading it now")
    register.add_argument("--wait", action="store_true", help="with --load-now: until ready")


_SETTINGS = (
    "max_model_len",
    "gpu_memory_utilization",
    "max_num_seqs",
    "dtype",
    "quantization",
    "device",
    "kv_cache_memory_bytes",
    "limit_mm_per_prompt",
    "tokenizer",
    "max_waiting",
    "keep_alive",
    "media",
)


# The registration's fields as the user typed them here: the server names its own fields.
_TYPED = {name: "--" + name.replace("_", "-") for name in (*_SETTINGS, "chat_template", "pinned")}
_TYPED.update(alias="ALIAS", model_name="MODEL")


def as_typed(message: str, param: str | None) -> str:
    """A refusal of `register` naming what the user typed: `'max_model_len': ...` becomes
    `--max-model-len: ...`, `'media.bogus' ...` becomes `--media 'bogus' ...`."""
    if not param:
        return message
    field, dot, rest = param.partition(".")
    typed = _TYPED.get(field)
    if typed is None or f"'{param}'" not in message:
        return message
    return message.replace(f"'{param}'", f"{typed} '{rest}'" if dot else typed, 1)


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The HTTP method, path and JSON body of the action."""
    alias = getattr(args, "alias", "")
    if args.action == "list":
        return "GET", "/v1/models", None
    if args.action == "register":
        body: dict[str, Any] = {"alias": alias, "model_name": args.model_name}
        body.update({k: getattr(args, k) for k in _SETTINGS if getattr(args, k) is not None})
        if args.chat_template:
            try:
                body["chat_template"] = Path(args.chat_template).read_text()
            except OSError as exc:
                raise ValueError(f"--chat-template {args.chat_template}: {exc.strerror}") from None
        if args.pinned:
            body["pinned"] = True
        if args.load_now:
            body.update(load_now=True, wait=args.wait)
        return "POST", "/v1/models/register", body
    if args.action == "load":
        return "POST", f"/v1/models/{alias}/load", {"wait": args.wait}
    if args.action == "unload":
        return "POST", f"/v1/models/{alias}/unload", None
    return "DELETE", f"/v1/models/{alias}", None


def run_models(args: argparse.Namespace) -> int:
    import httpx

    method, path, body = _request(args)
    key = args.admin_key or admin_key_from_env()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = args.base_url.rstrip("/") + path
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        print(f"vlmserve models: error: cannot reach {args.base_url}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": {"message": response.text.strip() or response.reason_phrase}}
    if response.is_error:
        error = answer.get("error", {})
        message = error.get("message", response.text)
        if args.action == "register":
            message = as_typed(message, error.get("param"))
        print(f"vlmserve models: error: {message} (HTTP {response.status_code})", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.action == "list":
        print(table(answer["data"]))
    elif args.action == "remove":
        print(f"{args.alias}: removed")
    else:
        print(f"{answer['id']}: {describe(answer)}")
    return 0


def describe(card: dict[str, Any]) -> str:
    parts = [f"{card['state']} (revision {card['revision']})"]
    if card.get("memory_bytes"):
        parts.append(f"{card['memory_bytes'] / 2**20:.0f} MiB")
    if card.get("last_error"):
        parts.append(f"last error: {card['last_error']}")
    return ", ".join(parts)


def table(cards: list[dict[str, Any]]) -> str:
    now = time.time()
    rows = [("MODEL", "STATE", "IN FLIGHT", "MEMORY", "LOAD", "UNLOADS IN", "LAST ERROR")]
    for card in cards:
        memory, seconds, expires = card["memory_bytes"], card["load_seconds"], card["expires_at"]
        rows.append(
            (
                card["id"] + (" (pinned)" if card.get("pinned") else ""),
                card["state"],
                str(card["in_flight"]),
                "-" if memory is None else f"{memory / 2**20:.0f} MiB",
                "-" if seconds is None else f"{seconds:.1f} s",
                "-" if expires is None else f"{max(0, expires - now):.0f} s",
                card["last_error"] or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )
