"""vlmserve: serving for vision-language models with output you can trust.

The public API, as vLLM users expect it::

    from vlmserve import LLM, SamplingParams, StructuredOutputsParams

and the transport-free serving entry points (`Serving`, `ChatRequest`, ...) for apps that
answer requests without HTTP. Names are imported on first use, so `import vlmserve` stays
cheap (no torch until an engine is needed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from vlmserve.engine.async_engine import AsyncEngine
    from vlmserve.engine.engine import LLMEngine, build_engine
    from vlmserve.offline import LLM
    from vlmserve.registry import ModelHandle, ModelInfo, ModelRegistry
    from vlmserve.serving import (
        ChatRequest,
        CompletionRequest,
        Generation,
        MediaLoader,
        ScoreRequest,
        Serving,
        ServingError,
    )
    from vlmserve.types import (
        CompletionOutput,
        MediaInput,
        Prompt,
        RequestOutput,
        SamplingParams,
        StructuredOutputsParams,
    )

_EXPORTS = {
    "LLM": "vlmserve.offline",
    "SamplingParams": "vlmserve.types",
    "StructuredOutputsParams": "vlmserve.types",
    "RequestOutput": "vlmserve.types",
    "CompletionOutput": "vlmserve.types",
    "Prompt": "vlmserve.types",
    "MediaInput": "vlmserve.types",
    "LLMEngine": "vlmserve.engine.engine",
    "build_engine": "vlmserve.engine.engine",
    "AsyncEngine": "vlmserve.engine.async_engine",
    "ModelRegistry": "vlmserve.registry",
    "ModelHandle": "vlmserve.registry",
    "ModelInfo": "vlmserve.registry",
    "Serving": "vlmserve.serving",
    "ChatRequest": "vlmserve.serving",
    "CompletionRequest": "vlmserve.serving",
    "Generation": "vlmserve.serving",
    "MediaLoader": "vlmserve.serving",
    "ScoreRequest": "vlmserve.serving",
    "ServingError": "vlmserve.serving",
}

__all__ = [
    "LLM",
    "AsyncEngine",
    "ChatRequest",
    "CompletionOutput",
    "CompletionRequest",
    "Generation",
    "LLMEngine",
    "MediaInput",
    "MediaLoader",
    "ModelHandle",
    "ModelInfo",
    "ModelRegistry",
    "Prompt",
    "RequestOutput",
    "SamplingParams",
    "ScoreRequest",
    "Serving",
    "ServingError",
    "StructuredOutputsParams",
    "__version__",
    "build_engine",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmserve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
