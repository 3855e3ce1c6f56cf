"""The HTTP/1.1 protocol the server speaks: uvicorn's h11 implementation plus a deadline for
each request head, which uvicorn lacks.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a connection
that has sent part of a request head (or nothing at all since it opened) is kept forever:
300 such connections cost nothing to hold open from a client and count against the
connection cap, locking everyone else out. Here every connection must deliver a whole head
within `head_timeout` seconds of opening or of its previous response; else it is closed.
Heads are also bounded in size (h11's `max_incomplete_event_size`, set by the server).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("vlmserve.http")


class HeadTimeoutH11Protocol(H11Protocol):
    head_timeout: float = 15.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_request():
            self._disarm()  # a whole head arrived; the body has its own deadline
        else:
            self._arm()  # between requests: the next head is due in time

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle from here on is uvicorn's keep-alive timeout; a started head is ours again.
        self._disarm()

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_request() and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            logger.info(
                "closed the connection of %s: no whole request head within %g s",
                client,
                self.head_timeout,
            )
            self.transport.close()


def protocol_with_head_timeout(seconds: float) -> type[HeadTimeoutH11Protocol]:
    """The protocol class for uvicorn's `http=`, with its head deadline."""
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,), {"head_timeout": seconds})
