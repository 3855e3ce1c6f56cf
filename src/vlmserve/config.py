"""Frozen configuration objects, one per layer. The CLI and the offline API build them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs one model."""

    model: str  # local folder or hub id
    tokenizer: str | None = None  # defaults to the model folder
    load_format: str = "auto"  # "auto" (safetensors) or "dummy" (random weights from config)
    dtype: str = "auto"  # "auto": bfloat16 on CUDA, float32 on CPU; or float32/bfloat16/float16
    device: str = "auto"  # "auto": cuda if available, else cpu
    seed: int = 0
    max_model_len: int | None = None  # None: min(model's max positions, 32768)
    max_num_seqs: int = 32  # sequences running at once
    max_num_batched_tokens: int = 2048  # tokens per step (prefill chunks + decodes)
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: derived from kv_cache_memory_bytes
    kv_cache_memory_bytes: int = 512 * 1024 * 1024
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    mm_cache_bytes: int = 256 * 1024 * 1024  # vision-embedding cache (LRU by bytes)
    limit_mm_per_prompt: dict[str, int] = field(default_factory=lambda: {"image": 16, "video": 2})
    chat_template: str | None = None  # a Jinja template overriding the tokenizer's


def cache_dir() -> Path:
    """Where generated artefacts (the default tiny model) live: $VLMSERVE_CACHE or
    ~/.cache/vlmserve."""
    root = os.environ.get("VLMSERVE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "vlmserve"
