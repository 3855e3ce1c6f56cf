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


def operations_config(args: argparse.Namespace) -> dict[str, Any]:
    """The `ServerConfig` fields these flags set."""
    return {"watchdog_seconds": args.watchdog_seconds}
