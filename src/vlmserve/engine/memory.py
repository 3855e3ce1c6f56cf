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
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

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


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storage behind `tensors`, each storage counted once (views and tied
    weights share one). A tensor in oneDNN's packed layout (`PackedLinear`) has no storage
    to ask: it counts as its elements, which its blocked layout holds (padding aside)."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        if tensor.is_mkldnn:
            seen[("mkldnn", id(tensor))] = tensor.numel() * tensor.element_size()
            continue
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def process_rss() -> int | None:
    """This process's resident set in bytes (Linux), or None where it cannot be read."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
