"""API keys checked before the request body is read.

FastAPI resolves a route's dependencies (`require_api_key`) only after it has read and
parsed the body, so without this an unauthenticated client could make the server buffer
and parse up to `--max-request-body-bytes` per request. This pure-ASGI check runs on the
headers alone, ahead of the body middleware: a missing or unknown key on `/v1/*` (or on
`/metrics` when an admin key is set) is answered 401 at once, with `Connection: close` so
the rest of the body is never read. The dependency still runs afterwards and holds the
key's tenant and concurrency slot (api/auth.py); both use the same check.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from vlmserve.api.auth import check_admin_key, find_grant
from vlmserve.api.errors import APIError, error_body
from vlmserve.api.tenants import Tenants


class KeyCheckMiddleware:
    def __init__(self, app: ASGIApp, tenants: Tenants, admin_api_key: str | None) -> None:
        self.app = app
        self.tenants = tenants
        self.admin_api_key = admin_api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = str(scope.get("path", ""))
            authorization = Headers(scope=scope).get("authorization", "")
            try:
                if path.startswith("/v1/"):
                    find_grant(self.tenants, authorization)
                elif path == "/metrics":
                    check_admin_key(self.admin_api_key, authorization)
            except APIError as exc:
                body = error_body(exc.status, exc.message, exc.param, exc.code)
                headers = {**exc.headers, "Connection": "close"}
                await JSONResponse(body, exc.status, headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
