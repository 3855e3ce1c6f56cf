"""Vision-embedding cache: processed media items by key (the caller's UUID or a content hash),
bounded in bytes, least recently used evicted first. A hit skips both preprocessing and the
vision tower; a request may name a cached item by UUID alone.

Keys live in namespaces: a request's cache salt (the server sets one per tenant) names its
namespace, so a UUID — or the hit that says an image was sent before — means something only
to requests with the same salt. Each item remembers the digest of the content it was made
from: data sent again under a cached UUID is checked against it, never silently replaced by
what the cache holds.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CachedItem:
    modality: str
    grid_thw: tuple[int, int, int]
    embeddings: torch.Tensor
    seconds_per_grid: float = 1.0  # a video's sampling, needed again when named by UUID alone
    digest: str | None = None  # content hash of the media it was made from

    @property
    def nbytes(self) -> int:
        return self.embeddings.numel() * self.embeddings.element_size()


def cache_key(namespace: str | None, name: str) -> str:
    """`name` (a UUID or content hash) within `namespace` (a cache salt; None: the shared
    namespace). The namespace is hashed: salts are secrets, keys show up in errors."""
    if namespace is None:
        return name
    scope = hashlib.sha256(namespace.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{scope}/{name}"


class MultiModalCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._items: OrderedDict[str, CachedItem] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # input processing runs off the engine thread
        self.hits = 0
        self.misses = 0

    def get(self, key: str, digest: str | None = None) -> CachedItem | None:
        """The item under `key`; with `digest` (the content the caller holds), only if it
        was made from that content — anything else is a miss."""
        with self._lock:
            item = self._items.get(key)
            if item is None or (digest is not None and item.digest != digest):
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, item: CachedItem) -> None:
        if item.nbytes > self.capacity_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = item
            self._bytes += item.nbytes
            while self._bytes > self.capacity_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def num_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
