"""`vlmserve serve`'s operations flags: probes, shutdown, connection limits and timeouts
(docs/deploy.md says how to set them for Kubernetes)."""

from __future__ import annotations

import argparse
from typing import Any


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def non_negative_seconds(text: str) -> float:
    value = _seconds(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be >= 0")
    return value


def positive_seconds(text: str) -> float:
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be > 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


# (flag, type, default, metavar, help) of the connection limits and timeouts.
_LIMITS = (
    ("--shutdown-timeout", positive_seconds, 30.0, "SECONDS",
     "after SIGTERM, how long requests in flight (streams included) may take to finish "
     "before the server exits anyway; a second SIGTERM exits at once"),
    ("--header-read-timeout", positive_seconds, 15.0, "SECONDS",
     "a connection must send a whole request head within this long, else it is closed"),
    ("--body-read-timeout", positive_seconds, 60.0, "SECONDS",
     "a request body must arrive within this long, else 408"),
    ("--timeout-keep-alive", positive_seconds, 5.0, "SECONDS",
     "an idle keep-alive connection is closed after this long"),
    ("--limit-concurrency", positive_int, 1024, "N",
     "open connections plus requests in progress; above it new requests get 503"),
)  # fmt: skip


def add_operations_flags(group: Any) -> None:
    group.add_argument(
        "--watchdog-seconds",
        type=non_negative_seconds,
        default=60.0,
        metavar="SECONDS",
        help="GET /ready answers 503 (and an error is logged) when an engine holds requests "
        "and no step completed for this long; 0: off",
    )
    group.add_argument(
        "--log-requests",
        action="store_true",
        default=False,
        help="also log the first 4 KiB of every request body (prompts and images: "
        "debugging only; off, no request content is ever logged)",
    )
    for flag, kind, default, metavar, what in _LIMITS:
        group.add_argument(flag, type=kind, default=default, metavar=metavar, help=what)


def operations_config(args: argparse.Namespace) -> dict[str, Any]:
    """The `ServerConfig` fields these flags set."""
    fields = {"watchdog_seconds": args.watchdog_seconds, "log_requests": args.log_requests}
    for flag, *_ in _LIMITS:
        name = flag.removeprefix("--").replace("-", "_")
        fields[name] = getattr(args, name)
    return fields
