"""How a model is shown: `ModelCard` (GET /v1/models: OpenAI's fields plus its lifecycle)
and `AdminModelCard` (the admin routes: also the registration, revisions and pin)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from vlmserve.registry import ModelStatus

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlmserve"
    root: str  # the hub id, or the model's name for a local folder (never a server path)
    max_model_len: int | None  # None: not loaded and not set at registration
    state: Literal["registered", "loading", "ready", "draining", "failed"]
    loaded_at: int | None  # unix seconds
    expires_at: int | None  # unix seconds of the idle unload; None: none due (busy, pinned)
    memory_bytes: int | None  # measured at the current load, else the last one
    in_flight: int
    load_seconds: float | None  # measured at the current load, else the last one
    last_error: str | None
    revision: int  # of its registration (PUT /v1/models/{id} names the one it changes)
    pinned: bool  # loaded from start-up on, never unloaded for idleness or evicted


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AdminModelCard(ModelCard):
    loaded_revision: int | None  # differs from revision while a new one loads (or failed)
    keep_alive: float  # seconds; -1 never
    waiting: int  # requests waiting for its load
    registration: dict[str, Any]


def _root(status: ModelStatus) -> str:
    source = status.spec.model_name
    return source if _HUB_ID.fullmatch(source) and not Path(source).exists() else status.alias


def _whole(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds)


def _fields(status: ModelStatus) -> dict[str, Any]:
    info = status.info
    return {
        "id": status.alias,
        "created": int(status.created_at),
        "root": _root(status),
        "max_model_len": info.max_model_len if info else status.spec.max_model_len,
        "state": str(status.state),
        "loaded_at": _whole(status.loaded_at),
        "expires_at": _whole(status.expires_at),
        "memory_bytes": status.memory_bytes,
        "in_flight": status.in_flight,
        "load_seconds": status.load_seconds,
        "last_error": status.last_error,
        "revision": status.revision,
        "pinned": status.pinned,
    }


def card(status: ModelStatus) -> ModelCard:
    return ModelCard(**_fields(status))


def admin_card(status: ModelStatus) -> AdminModelCard:
    return AdminModelCard(
        **_fields(status),
        loaded_revision=status.loaded_revision,
        keep_alive=status.keep_alive,
        waiting=status.waiting,
        registration=status.spec.describe(),
    )
