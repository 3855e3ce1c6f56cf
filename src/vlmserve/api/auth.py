"""Bearer-token checks and per-key limits (the keys and tenants themselves: tenants.py).

/v1/* needs a key when `--api-key` or `--api-keys-file` is set (the admin key is accepted
there too); the request then runs as the key's tenant (`request.state.tenant`) and holds one
of the key's concurrency slots until its response has ended, streams included. /metrics
needs `admin_api_key` when one is set, compared with `hmac.compare_digest` so response
timing does not reveal how much of a guess was right. Model administration (register,
replace, load, unload, remove) needs the admin key and is off on a server started without
one. /health, /ready and /version stay open for probes.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

from fastapi import Request

from vlmserve.api.errors import APIError
from vlmserve.api.tenants import Grant, Tenant, Tenants


def _bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


def _invalid() -> APIError:
    return APIError(
        401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def request_tenant(request: Request) -> Tenant | None:
    """The tenant `require_api_key` found; None when the server has no keys."""
    tenant: Tenant | None = getattr(request.state, "tenant", None)
    return tenant


async def require_api_key(request: Request) -> AsyncIterator[None]:
    # A dependency with `yield`: FastAPI runs the rest after the response has been sent,
    # so the key's slot is held for the whole stream.
    tenants: Tenants = request.app.state.tenants
    request.state.tenant = None
    grant = find_grant(tenants, request.headers.get("authorization", ""))
    if grant is None:
        yield
        return
    with tenants.limiter.admit(grant):
        request.state.tenant = grant.tenant
        yield


def find_grant(tenants: Tenants, authorization: str) -> Grant | None:
    """The grant of the key in an `Authorization` header value; None when the server has
    no keys. APIError 401 when the key is missing or unknown. (Also called before the body
    is read: api/key_check.py.)"""
    if not tenants.required:
        return None
    grant = tenants.lookup(_bearer(authorization))
    if grant is None:
        raise _invalid()
    return grant


def check_admin_key(admin_api_key: str | None, authorization: str) -> None:
    if admin_api_key is not None and not hmac.compare_digest(
        _bearer(authorization).encode(), admin_api_key.encode()
    ):
        raise _invalid()


async def require_admin_key(request: Request) -> None:
    config = request.app.state.vlm.config
    check_admin_key(config.admin_api_key, request.headers.get("authorization", ""))


async def require_model_admin(request: Request) -> None:
    """No key or an unknown one: 401. Another known key (a user's): 403. No admin key
    configured: 403 for everyone, since changing what a server loads is never open by
    default."""
    config = request.app.state.vlm.config
    if config.admin_api_key is None:
        raise APIError(
            403,
            "model administration is off on this server: start it with --admin-api-key",
            code="admin_disabled",
        )
    token = _bearer(request.headers.get("authorization", ""))
    if hmac.compare_digest(token.encode(), config.admin_api_key.encode()):
        return
    tenants: Tenants = request.app.state.tenants
    if tenants.lookup(token) is not None:
        raise APIError(
            403, "this API key may not administer models; use the admin key", code="forbidden"
        )
    raise _invalid()
