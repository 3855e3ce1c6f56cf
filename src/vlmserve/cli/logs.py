"""Logging for the process: one format for vlmserve's and uvicorn's lines, on stderr.

`--log-level` sets vlmserve's and uvicorn's loggers; other libraries show warnings and
errors only, so that `debug` stays readable. `--log-format text` (the default) writes
lines for people; `--log-format json` writes one JSON object per line for log pipelines:
`time` (UTC, ISO 8601), `level`, `logger`, `message`, `request_id` on every line logged on
a request's behalf, and on access lines (`vlmserve.access`) `method`, `route`, `status`,
`latency_s`, `model`, `prompt_tokens`, `completion_tokens`.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

from vlmserve.trace import current_trace

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_OURS = ("vlmserve", "uvicorn", "uvicorn.error", "uvicorn.access")
# Attributes the access log sets on its records (api/access_log.py), in output order.
ACCESS_FIELDS = (
    "method",
    "route",
    "status",
    "latency_s",
    "model",
    "prompt_tokens",
    "completion_tokens",
)


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record logged while handling it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            trace = current_trace()
            record.request_id = trace.request_id if trace is not None else None
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(FORMAT, datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is not None and record.name != "vlmserve.access":  # says it already
            line += f" [request {request_id}]"
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    numeric = getattr(logging, level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    for name in _OURS:
        logger = logging.getLogger(name)
        # uvicorn would otherwise install its own handlers and format (see api/server.py).
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(numeric)
