"""`--log-level`: vlmserve's and uvicorn's loggers follow it; other libraries stay quiet."""

from __future__ import annotations

import logging

from vlmserve.cli.logs import configure_logging


def test_log_level_applies_to_vlmserve_and_uvicorn_only() -> None:
    configure_logging("debug")
    assert logging.getLogger("vlmserve.engine").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("uvicorn.access").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.INFO)
    assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)
    configure_logging("warning")
    assert not logging.getLogger("vlmserve.server").isEnabledFor(logging.INFO)
    assert not logging.getLogger("uvicorn.access").isEnabledFor(logging.INFO)
    assert len(logging.getLogger().handlers) == 1  # configured twice, one handler
