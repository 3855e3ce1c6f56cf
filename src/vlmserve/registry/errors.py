"""Why the registry refuses: plain exceptions that name the model, its state and the field at
fault. The serving layer and the admin API map them to statuses (404, 503 + Retry-After,
400, 409); the CLI prints `RegistryFileError` as a start-up error."""

from __future__ import annotations


class RegistryError(Exception):
    """A request or change the registry cannot carry out."""


class ModelNotFound(RegistryError, LookupError):
    def __init__(self, alias: str, served: list[str]) -> None:
        names = ", ".join(repr(name) for name in served) or "no model"
        super().__init__(f"the model {alias!r} does not exist; this server serves {names}")
        self.alias = alias


class ModelUnavailable(RegistryError):
    """The model exists but cannot take requests now; `retry_after` seconds is a hint."""

    def __init__(
        self,
        alias: str,
        state: str,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"the model {alias!r} is {state}, not ready{detail}; retry later")
        self.alias = alias
        self.state = state
        self.retry_after = retry_after


class SpecError(RegistryError, ValueError):
    """A registration with a bad value; `field` is its name as the client wrote it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"'{field}': {message}")
        self.field = field
        self.reason = message


class SpecConflict(RegistryError):
    """The change contradicts what is registered (another spec, an older revision, a pin)."""

    def __init__(self, alias: str, message: str) -> None:
        super().__init__(message)
        self.alias = alias


class RegistryFileError(RegistryError, OSError):
    """The registry file cannot be opened, read or migrated. Never answered by starting
    with an empty registry: the message names the file and what to do."""
