"""Logging for the process: one format for vlmserve's and uvicorn's lines, on stderr.

`--log-level` sets vlmserve's and uvicorn's loggers (uvicorn's access log is at info);
other libraries show warnings and errors only, so that `debug` stays readable.
"""

from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_OURS = ("vlmserve", "uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(level: str = "info") -> None:
    numeric = getattr(logging, level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    for name in _OURS:
        logger = logging.getLogger(name)
        # uvicorn would otherwise install its own handlers and format (see api/server.py).
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(numeric)
