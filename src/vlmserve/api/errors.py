"""Every failure leaves the server as an OpenAI-style body:
`{"error": {"message", "type", "param", "code"}}`, so any OpenAI client maps it to its own
exception class. Validation errors are 400 (not FastAPI's 422: OpenAI clients expect 400),
and anything unexpected is a logged 500 in the same shape rather than a bare traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.api.responses import ErrorResponse
from vlmserve.serving.errors import ClientDisconnected, ServingError

__all__ = ["APIError", "ClientDisconnected", "ServingError", "error_body", "install"]

logger = logging.getLogger(__name__)

# For the OpenAPI document: every endpoint may answer with these, all in the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)
}
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 500, 503)
}

# OpenAI's `type` per status; clients key their exception classes on the status.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    503: "service_unavailable",
}

# Fields OpenAI defines that this server cannot honour: naming them beats "unknown field".
UNSUPPORTED_FIELDS = frozenset(
    {
        "functions",
        "function_call",
        "audio",
        "modalities",
        "prediction",
        "store",
        "metadata",
        "service_tier",
        "reasoning_effort",
        "web_search_options",
        "best_of",
        "suffix",
        "name",
        # the Responses API's
        "background",
        "conversation",
        "include",
        "max_tool_calls",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "top_logprobs",
    }
)


class APIError(ServingError):
    """A request the HTTP layer itself refuses (validation, auth). Like every `ServingError`
    raised below it, rendered by `install`."""


def _encodable(text: str | None) -> str | None:
    """Text that can go out as UTF-8: a message quoting the client's input could carry a
    lone surrogate, and the JSON response would then fail to encode (a 500)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape. Every refusal's body is built here, so this is also where
    refusals are logged: the client reads the reason in the body, the operator in the log
    (at info, next to uvicorn's access line for the same request)."""
    if 400 <= status < 499:
        where = f" (param: {param})" if param else ""
        logger.info("refused with %d: %s%s", status, message, where)
    return {
        "error": {
            "message": _encodable(message),
            "type": _TYPES.get(status, "server_error"),
            "param": _encodable(param),
            "code": _encodable(code),
        }
    }


def error_response(error: ServingError) -> JSONResponse:
    return JSONResponse(
        error_body(error.status, error.message, error.param, error.code),
        status_code=error.status,
        headers=error.headers,
    )


def format_loc(loc: Sequence[int | str]) -> str | None:
    """("body", "messages", 0, "content", "#parts", 1, "type") -> "messages[0].content[1].type".
    Segments starting with "#" are union tags (see protocol.py), not fields; a key of a map
    that is not a name is written in brackets (`logit_bias["12345"]`)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("#") or (part == "body" and not out):
            continue
        elif not part.isidentifier() and out:
            out += f"[{json.dumps(part)}]"  # a map's key: logit_bias["12345"]
        else:
            out += f".{part}" if out else part
    return out or None


def _describe(err: Mapping[str, Any]) -> tuple[str, str | None]:
    param = format_loc(err.get("loc", ()))
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "json_invalid":
        return f"the request body is not valid JSON: {ctx.get('error', err.get('msg'))}", None
    if param is None:
        return "the request body must be a JSON object", None
    if kind == "extra_forbidden":
        field = str(err["loc"][-1])
        if field in UNSUPPORTED_FIELDS:
            return f"'{param}' is not supported by this server", param
        return f"'{param}' is not a known field", param
    if kind == "missing":
        return f"'{param}' is required", param
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag", "")).lstrip("#")
        expected = str(ctx.get("expected_tags", "")).replace("#", "")
        if not tag:  # an object without a string "type" (protocol._type_tag)
            return (
                f"'{param}.type' is required: a string, one of {expected}",
                f"{param}.type",
            )
        return f"'{param}.type' {tag!r} is not known (expected one of {expected})", f"{param}.type"
    if kind == "union_tag_not_found":
        return f"'{param}' must be an object with a 'type' field", param
    message = str(err.get("msg", "is invalid"))
    if kind == "value_error":  # a validator's own words, without pydantic's preamble
        message = message.removeprefix("Value error, ")
    return f"'{param}': {message}", param


def validation_error(errors: Sequence[Mapping[str, Any]]) -> APIError:
    described = [_describe(e) for e in errors]
    message = "; ".join(dict.fromkeys(m for m, _ in described[:5]))
    return APIError(400, message, described[0][1] if described else None)


async def _serving_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    return error_response(exc)


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc.errors()))


async def _http_exception(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        message = "no such route; see /openapi.json"
    # The body parser (json_body.BodyError) names the field; FastAPI's own exceptions do not.
    param = getattr(exc, "param", None)
    return error_response(APIError(exc.status_code, message, param, headers=exc.headers))


async def _client_disconnected(_: Request, exc: Exception) -> JSONResponse:
    # Nobody reads this; it keeps the access log and the status metric honest (nginx's 499).
    return JSONResponse(error_body(499, "client closed the request"), status_code=499)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnected, _client_disconnected)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)


class CatchAllMiddleware:
    """Outermost guard: an exception no handler knew becomes a logged 500 in OpenAI's shape
    (Starlette's own fallback answers in plain text and re-raises into the server)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # mid-stream: the status is already sent, all we can do is stop
                return
            body = error_body(500, "internal server error; this is a bug, please report it")
            await JSONResponse(body, status_code=500)(scope, receive, send)
