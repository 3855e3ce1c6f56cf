"""The model registry: which models this process serves and their lifecycle (see registry.py).
Free of HTTP (an import-linter contract): the serving layer maps its errors to statuses."""

from vlmserve.registry.info import ModelInfo
from vlmserve.registry.registry import (
    ModelHandle,
    ModelNotFound,
    ModelRegistry,
    ModelState,
    ModelStatus,
    ModelUnavailable,
    RegistryError,
)

__all__ = [
    "ModelHandle",
    "ModelInfo",
    "ModelNotFound",
    "ModelRegistry",
    "ModelState",
    "ModelStatus",
    "ModelUnavailable",
    "RegistryError",
]
