"""Handing freed memory back: Python's cycles first, then the allocator under torch.

Dropping the last reference to a tensor returns it to torch's allocator, not necessarily to
the operating system: CUDA keeps a cache of blocks, and glibc keeps small freed chunks in its
arenas. `release_memory` asks both to let go, so a closed engine's footprint really leaves
the process (what a registry that unloads models measures).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import platform
import sys

import torch

logger = logging.getLogger(__name__)


def trim_heap() -> bool:
    """glibc's `malloc_trim(0)`: return free heap pages to the OS. False where unavailable
    (not Linux, or another C library such as musl)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.malloc_trim(0))


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # Host memory too on CUDA: tokenizer tables, grammar caches, staging buffers.
    trim_heap()
