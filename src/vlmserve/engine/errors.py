"""Why an engine refuses or ends a request for reasons that are not the request's fault.

Bad input is an `InputError` (engine/inputs.py); these are about the engine itself, and the
serving layer maps each to a status: overloaded -> 429, the rest -> 503 with their `code`.
"""

from __future__ import annotations


class EngineOverloaded(RuntimeError):
    """Too many requests waiting; the caller should retry later (HTTP 429)."""


class EngineUnavailable(RuntimeError):
    """The engine cannot take or finish this request now (HTTP 503)."""

    code = "engine_unavailable"


class EngineDead(EngineUnavailable):
    """The engine loop is not running (never started, or it stopped)."""

    code = "engine_dead"


class EngineDraining(EngineUnavailable):
    """The engine finishes the requests it has and admits no new ones (it is being unloaded)."""

    code = "engine_draining"


class EngineClosed(EngineUnavailable):
    """The engine was closed: its memory is released and it serves nothing any more."""

    code = "engine_closed"


class EngineLost(EngineUnavailable):
    """The engine running this request went away before it finished (a Ray replica died).
    The request did nothing the caller saw yet unless it streamed: an answer not sent so far
    may be run again from the start."""

    code = "engine_lost"
