"""The trace of the request being handled: its id, the model it asked for and its token
counts, carried by a context variable for as long as the request runs.

The HTTP edge opens one per request (api/access_log.py), the serving layer fills in the model
and the tokens, and the log formatter puts the id on every line logged on the request's
behalf (cli/logs.py). Tasks started while handling the request share the same trace object,
so what a stream's task records is seen by the middleware that logs the request's end.
Plain data: every layer may import it.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass
class RequestTrace:
    request_id: str
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


_current: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar(
    "vlmserve_request_trace", default=None
)


def current_trace() -> RequestTrace | None:
    return _current.get()


def open_trace(trace: RequestTrace) -> contextvars.Token[RequestTrace | None]:
    """Make `trace` the current one; hand the token to `close_trace` when the request ends."""
    return _current.set(trace)


def close_trace(token: contextvars.Token[RequestTrace | None]) -> None:
    _current.reset(token)
