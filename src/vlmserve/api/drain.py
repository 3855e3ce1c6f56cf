"""The drain gate: what the server does between SIGTERM and exiting.

Once `start()` is called (the first SIGTERM or SIGINT, see api/shutdown.py) the gate answers
`GET /ready` with 503 at once, so load balancers stop sending traffic, and refuses every new
request with 503 `shutting_down` (with `Retry-After` and `Connection: close`, so clients
retry elsewhere on a fresh connection) — `/health` and `/metrics` stay open. Requests
admitted before keep running, streams included, and are counted until their response has
ended: `wait_idle(timeout)` is how long the server waits for them.
"""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from vlmserve.api.errors import error_body

POLL_S = 0.05
OPEN_WHILE_DRAINING = frozenset({"/health", "/metrics"})


class DrainGate:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    def start(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the admitted requests to end; True if none is
        left."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        return self.in_flight == 0


class DrainGateMiddleware:
    def __init__(self, app: ASGIApp, gate: DrainGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.gate.draining and scope.get("path") not in OPEN_WHILE_DRAINING:
            body = error_body(503, "the server is shutting down; retry", code="shutting_down")
            headers = {"Retry-After": "1", "Connection": "close"}
            await JSONResponse(body, status_code=503, headers=headers)(scope, receive, send)
            return
        self.gate.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.in_flight -= 1
