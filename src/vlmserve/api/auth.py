"""Bearer-token checks. Keys are compared with `hmac.compare_digest` so response timing does
not reveal how much of a guess was right.

/v1/* needs `api_key` when one is set (the admin key is accepted there too); /metrics needs
`admin_api_key` when one is set. /health, /ready and /version stay open for probes.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from vlmserve.api.errors import APIError


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check(request: Request, keys: list[str]) -> None:
    token = _bearer(request)
    if token is None:
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = token.encode()
    # Every key is compared (no early exit), so timing does not say which key matched.
    matches = [hmac.compare_digest(given, key.encode()) for key in keys]
    if not any(matches):
        raise APIError(
            401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )


async def require_api_key(request: Request) -> None:
    config = request.app.state.vlm.config
    if config.api_key is not None:
        _check(request, [k for k in (config.api_key, config.admin_api_key) if k is not None])


async def require_admin_key(request: Request) -> None:
    config = request.app.state.vlm.config
    if config.admin_api_key is not None:
        _check(request, [config.admin_api_key])
