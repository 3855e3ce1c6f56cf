"""The HTTP/1.1 protocol the server speaks: uvicorn's httptools implementation (llhttp, a C
parser) plus two bounds on request heads that uvicorn lacks.

- Time: uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a
  connection that has sent part of a request head (or nothing at all since it opened) is
  kept forever: 300 such connections cost nothing to hold open from a client and count
  against the connection cap, locking everyone else out. Here every connection must deliver
  a whole head within `head_timeout` seconds of opening or of its previous response; else it
  is closed, unanswered.
- Size: llhttp sets no limit, and httptools buffers a header until its line ends, so one
  endless header would grow in memory. A head over `max_head_bytes` is answered 431 and the
  connection closed.

httptools rather than uvicorn's h11 protocol: h11 buffers and frames request bodies in pure
Python, which under a flood of large prompts held the event loop long enough to delay
/health (figures in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger("vlmserve.http")

MAX_HEAD_BYTES = 16 * 1024  # a request line plus headers
_TOO_LARGE = b"Request header fields too large"


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing and uvicorn answers through
    `send_400_response`, which answers 431 for this."""


class HttpProtocol(HttpToolsProtocol):
    head_timeout: float = 15.0
    max_head_bytes: int = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # received since the current head began, while it is incomplete
        self._head_too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_request():
            self._disarm()  # a whole head arrived; the body has its own deadline
            self._head_bytes = 0
            return
        self._arm()  # between requests: the next head is due in time
        # What httptools holds of an unfinished head. A chunk that completes a head is not
        # counted here (it may carry the body too): on_headers_complete measures that head.
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._send_431()

    def on_headers_complete(self) -> None:
        # The head as it came, near enough: the target, then each "name: value\r\n".
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._send_431()
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle from here on is uvicorn's keep-alive timeout; a started head is ours again.
        self._disarm()

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _send_431(self) -> None:
        self._log_closed(f"a request head over {self.max_head_bytes} bytes (431)")
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(_TOO_LARGE),
            b"connection: close\r\n\r\n",
            _TOO_LARGE,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()

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
            self._log_closed(f"no whole request head within {self.head_timeout:g} s")
            self.transport.close()

    def _log_closed(self, reason: str) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        logger.info("closed the connection of %s: %s", client, reason)


def http_protocol(head_timeout: float) -> type[HttpProtocol]:
    """The protocol class for uvicorn's `http=`, with its head deadline."""
    return type("HttpProtocol", (HttpProtocol,), {"head_timeout": head_timeout})
