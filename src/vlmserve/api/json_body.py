"""Request bodies parsed once, strictly: what `json.loads` lets through but no handler should
see is a 400 naming the field, before any validation or work.

- a repeated key (`{"model": "a", "model": "b"}`): JSON parsers disagree on which one wins,
  so a proxy and this server could read different requests;
- a lone surrogate (`"\\ud800"`): valid JSON, but not text — tokenizers, URL encoders and
  file systems raise on it;
- nesting deeper than `MAX_JSON_DEPTH`: recursive code further on (schema rewriting,
  grammar compilers) would overflow;
- more than `MAX_JSON_OBJECTS` objects: validating them would hold the GIL for seconds.

`StrictJSONRoute` makes FastAPI read bodies through this parser (its own `json.loads` then
never runs); routers opt in with `APIRouter(route_class=StrictJSONRoute)`. A body of
`OFFLOAD_BYTES` or more is parsed *and validated* on the app's work pool
(serving/work_pool.py), off the event loop: a 12 MB body costs up to a second of CPU,
which on the loop would stall every other request; FastAPI then receives the validated
model and passes it through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope

from vlmserve.serving.work_pool import WorkPool

# A JSON schema nested 64 levels deep (the most structured outputs accept) is ~130 levels.
MAX_JSON_DEPTH = 256
# Objects in one body. Validating one costs microseconds in pydantic-core, which holds the
# GIL for the whole body: 400k content parts held every thread, the event loop included,
# for seconds. A long conversation or a 3000-property schema is a few thousand.
MAX_JSON_OBJECTS = 50_000
_SURROGATE = re.compile("[\ud800-\udfff]")
# Long paths are cut in `param`: the field's first levels say where it is.
_MAX_PARAM_LEVELS = 8
# Smaller bodies parse and validate in well under a millisecond: cheaper than a thread hop.
OFFLOAD_BYTES = 256 * 1024


class BodyError(HTTPException):
    """A 400 raised while FastAPI reads the body: FastAPI re-raises HTTPExceptions as they
    are (anything else becomes an anonymous 'error parsing the body'); errors.py renders
    `param`."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(400, message)
        self.param = param


class _Repeated(dict[str, Any]):
    """An object that had a key twice; the walk reports it with its path."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str) -> None:
        super().__init__(pairs)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return _Repeated(pairs, key)
            seen.add(key)
    return obj


def _format(path: list[str | int]) -> str | None:
    """["messages", 0, "content"] -> "messages[0].content", as errors name fields."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # A key with a lone surrogate is named escaped: the error body must encode.
            part = part.encode("utf-8", "backslashreplace").decode("utf-8")
            out += f".{part}" if out else part
    return out or None


def _where(path: list[str | int]) -> str | None:
    return _format(path[:_MAX_PARAM_LEVELS])


def _check_text(value: str, path: list[str | int], what: str) -> None:
    if not value.isascii() and (match := _SURROGATE.search(value)) is not None:
        where = _where(path)
        raise BodyError(
            f"{what} of '{where or 'the body'}' holds a lone surrogate ({match.group()!a} at "
            f"character {match.start()}): text must be valid Unicode",
            where,
        )


def parse_body(body: bytes) -> Any:
    """The body as JSON, or BodyError naming the field (json.JSONDecodeError for bad syntax,
    which FastAPI turns into its usual `json_invalid` error)."""
    try:
        value = json.loads(body, object_pairs_hook=_object)
    except UnicodeDecodeError as exc:
        raise BodyError(f"the request body is not valid UTF-8: {exc.reason}", None) from None
    except RecursionError:
        raise BodyError(
            f"the request body nests deeper than {MAX_JSON_DEPTH} levels", None
        ) from None
    # Iterative: the walk itself must not recurse on whatever depth arrived.
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    objects = 0
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            where = _where(path)
            raise BodyError(
                f"'{where}' nests deeper than {MAX_JSON_DEPTH} levels in the request body",
                where,
            )
        if isinstance(node, str):
            _check_text(node, path, "the value")
        elif isinstance(node, dict):
            objects += 1
            if objects > MAX_JSON_OBJECTS:
                where = _where(path)
                raise BodyError(
                    f"the request body holds more than {MAX_JSON_OBJECTS} objects (the "
                    f"{MAX_JSON_OBJECTS + 1}th at '{where or 'the top'}'); send fewer parts",
                    where,
                )
            if isinstance(node, _Repeated):
                where = _where([*path, node.key])
                raise BodyError(
                    f"the key {node.key!a} appears twice in "
                    f"{_format(path) or 'the request body'}; give each field once",
                    where,
                )
            for key, child in node.items():
                _check_text(key, [*path, key], "the key")
                stack.append((child, [*path, key]))
        elif isinstance(node, list):
            stack.extend((child, [*path, i]) for i, child in enumerate(node))
    return value


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_body(await self.body())
        return self._json


class _ValidatedRequest(Request):
    """A request whose body was read, parsed and validated already: `json()` is the model
    (FastAPI's own check of it then passes it through)."""

    def __init__(self, scope: Scope, receive: Receive, body: bytes, value: Any) -> None:
        super().__init__(scope, receive)
        # FastAPI reads the body again before `json()`; the stream is consumed by now.
        self._body = body
        self._value = value

    async def json(self) -> Any:
        return self._value


def _parse_and_validate(body: bytes, field: Any) -> Any:
    """On a worker thread: what FastAPI would do with the body (`field`: the route's body
    field), the same errors included."""
    try:
        value = parse_body(body)
    except json.JSONDecodeError as exc:  # FastAPI's own shape for bad syntax
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}
        raise RequestValidationError([{**error, "input": {}, "ctx": {"error": exc.msg}}]) from None
    validated, errors = field.validate(value, {}, loc=("body",))
    if errors:
        raise RequestValidationError(errors)
    return validated


async def _read_body(request: Request) -> bytes:
    """The body, as `request.body()` reads it less one copy: Starlette joins the body with the
    empty chunk that ends its stream, copying every byte once more on the event loop (a cold
    16 MiB copy is 6-8 ms here). A body that came in one piece (api/body_limit.py delivers
    it so) is returned as it is."""
    chunks = [chunk async for chunk in request.stream() if chunk]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _json_content(request: Request) -> bool:
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    return kind == "application/json" or kind.endswith("+json")


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field

        async def strict_handler(request: Request) -> Response:
            body = await _read_body(request)
            if field is not None and len(body) >= OFFLOAD_BYTES and _json_content(request):
                work: WorkPool = request.app.state.vlm.serving.work
                value = await work.run(_parse_and_validate, body, field)
                return await handler(_ValidatedRequest(request.scope, request.receive, body, value))
            strict = StrictJSONRequest(request.scope, request.receive)
            strict._body = body  # read once, above
            return await handler(strict)

        return strict_handler
