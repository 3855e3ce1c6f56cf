"""The model registry: which models this process serves, their durable registrations
(SQLite) and their lifecycle (load on demand, keep-alive, eviction, drain). See
docs/registry.md. Free of HTTP (an import-linter contract): the serving layer and the admin
API map its errors to statuses."""

from vlmserve.registry.entry import ModelHandle, ModelState, ModelStatus
from vlmserve.registry.errors import (
    ModelNotFound,
    ModelUnavailable,
    RegistryError,
    RegistryFileError,
    SpecConflict,
    SpecError,
)
from vlmserve.registry.events import EventKind, ModelEvent
from vlmserve.registry.host import EngineHost, Loaded, LocalEngineHost
from vlmserve.registry.info import ModelInfo
from vlmserve.registry.process_host import ProcessEngineHost
from vlmserve.registry.registry import ModelRegistry
from vlmserve.registry.spec import NEVER, ModelSpec, parse_keep_alive
from vlmserve.registry.store import RegistryStore, StoredModel

__all__ = [
    "NEVER",
    "EngineHost",
    "EventKind",
    "Loaded",
    "LocalEngineHost",
    "ModelEvent",
    "ModelHandle",
    "ModelInfo",
    "ModelNotFound",
    "ModelRegistry",
    "ModelSpec",
    "ModelState",
    "ModelStatus",
    "ModelUnavailable",
    "ProcessEngineHost",
    "RegistryError",
    "RegistryFileError",
    "RegistryStore",
    "SpecConflict",
    "SpecError",
    "StoredModel",
    "parse_keep_alive",
]
