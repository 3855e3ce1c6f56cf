"""Request bodies parsed once, strictly: what `json.loads` lets through but no handler should
see is a 400 naming the field, before any validation or work.

- a repeated key (`{"model": "a", "model": "b"}`): JSON parsers disagree on which one wins,
  so a proxy and this server could read different requests;
- a lone surrogate (`"\\ud800"`): valid JSON, but not text — tokenizers, URL encoders and
  file systems raise on it;
- nesting deeper than `MAX_JSON_DEPTH`: recursive code further on (schema rewriting,
  grammar compilers) would overflow.

`StrictJSONRoute` makes FastAPI read bodies through this parser (its own `json.loads` then
never runs); routers opt in with `APIRouter(route_class=StrictJSONRoute)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

# A JSON schema nested 64 levels deep (the most structured outputs accept) is ~130 levels.
MAX_JSON_DEPTH = 256
_SURROGATE = re.compile("[\ud800-\udfff]")
# Long paths are cut in `param`: the field's first levels say where it is.
_MAX_PARAM_LEVELS = 8


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


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
