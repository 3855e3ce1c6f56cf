"""The CLI configures process-wide logging; tests that run it in-process put it back."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

_LOGGERS = ("", "vlmserve", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = [
        (logger, logger.level, list(logger.handlers), logger.propagate)
        for logger in map(logging.getLogger, _LOGGERS)
    ]
    yield
    for logger, level, handlers, propagate in saved:
        logger.setLevel(level)
        logger.handlers = handlers
        logger.propagate = propagate
