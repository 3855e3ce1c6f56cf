"""How the serving layer refuses a request: one plain exception with what an HTTP error body
needs (status, message, param, code, headers), and the mapping from the layers below.

The HTTP layer renders `ServingError`s as OpenAI error bodies; other callers (the safety
app, a Ray replica) read the same fields. No web framework is involved.
"""

from __future__ import annotations

from collections.abc import Mapping

from vlmserve.engine.errors import EngineOverloaded, EngineUnavailable
from vlmserve.engine.inputs import InputError
from vlmserve.registry import ModelNotFound, ModelUnavailable, RegistryError

RETRY_AFTER_S = 1


class ServingError(Exception):
    """A request refused or failed; `param` names the request field at fault, if any.

    The message names the field the way `param` does: giving `param` a new name (the
    engine says `structured_outputs.json` where the client sent `response_format`) renames
    it in the message too, so a client is never told about a field it did not send."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self._param = param
        self.code = code
        self.headers = dict(headers or {})

    @property
    def param(self) -> str | None:
        return self._param

    @param.setter
    def param(self, name: str | None) -> None:
        if self._param and name and name != self._param:
            self.message = self.message.replace(self._param, name)
        self._param = name


class ClientDisconnected(Exception):
    """The client left before the answer was ready; the request was aborted."""


def _retry_after(seconds: float | None = RETRY_AFTER_S) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(seconds or RETRY_AFTER_S)))}


def engine_error(exc: BaseException) -> ServingError | None:
    """The error for an exception out of an engine's `generate`, or None if unknown. An
    engine that answers for another process (a Ray replica) raises `ServingError`s itself:
    those pass as they are."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, EngineOverloaded):
        return ServingError(429, str(exc), code="overloaded", headers=_retry_after())
    if isinstance(exc, EngineUnavailable):
        # A dead loop will not come back by itself; a draining or closed engine makes way
        # for another (an unload, a restart): worth retrying.
        headers = None if exc.code == "engine_dead" else _retry_after()
        return ServingError(503, str(exc), code=exc.code, headers=headers)
    if isinstance(exc, InputError):
        return ServingError(exc.status, str(exc), exc.param)
    if isinstance(exc, ValueError):
        # Raised while the engine accepts the request (e.g. a grammar that cannot be compiled,
        # StructuredOutputError): a problem with this request, not with the server.
        return ServingError(400, str(exc), getattr(exc, "param", None))
    return None


def registry_error(exc: RegistryError) -> ServingError:
    if isinstance(exc, ModelNotFound):
        return ServingError(404, str(exc), "model", code="model_not_found")
    if isinstance(exc, ModelUnavailable):
        headers = _retry_after(exc.retry_after)
        return ServingError(503, str(exc), "model", code="model_unavailable", headers=headers)
    return ServingError(503, str(exc), "model", code="model_unavailable")
