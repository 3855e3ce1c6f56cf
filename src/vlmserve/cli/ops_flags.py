"""`vlmserve serve`'s operations flags: probes, shutdown, connection limits and timeouts
(docs/deploy.md says how to set them for Kubernetes)."""

from __future__ import annotations

import argparse
from typing import Any


def non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be >= 0")
    return value


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


def operations_config(args: argparse.Namespace) -> dict[str, Any]:
    """The `ServerConfig` fields these flags set."""
    return {"watchdog_seconds": args.watchdog_seconds, "log_requests": args.log_requests}
