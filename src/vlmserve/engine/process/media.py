"""`SentMedia`: which images and videos the engine process was sent, so that one sent again
is neither preprocessed nor shipped again (in-process, a repeated image is a vision-cache
hit before any preprocessing; without this the HTTP side would redo that work every time).

It is the HTTP side's `MultiModalCache`, holding for each item sent with its pixels what the
engine process's cache will hold (modality, grid, digest), with a storage-free ("meta")
tensor of the embeddings' shape in place of the embeddings, so both caches count the same
bytes. An item it knows crosses as key and digest alone; the engine process takes the
embeddings from its cache, and if it no longer holds them (evicted, or the request that
carried the pixels ended before they were encoded) it refuses with `MediaNotCached` and the
request is sent again, processed in full.
"""

from __future__ import annotations

import torch

from vlmserve.engine.inputs import ProcessedInput
from vlmserve.engine.mm_cache import CachedItem, MultiModalCache
from vlmserve.engine.sequence import MultiModalItem


class SentMedia:
    def __init__(self, capacity_bytes: int, hidden_size: int, dtype: torch.dtype) -> None:
        self.cache = MultiModalCache(capacity_bytes)  # the HTTP side's InputProcessor reads it
        self.hidden_size = hidden_size
        self.dtype = dtype

    def strip(self, processed: ProcessedInput) -> list[MultiModalItem]:
        """Drop the placeholders of the items the cache knew (the engine process fills them
        in) and return the items that carry pixels: `remember` them once sent."""
        fresh = []
        for item in processed.mm_items:
            if item.pixel_values is not None:
                fresh.append(item)
            elif item.embeddings is not None and item.embeddings.is_meta:
                item.embeddings = None
        return fresh

    def remember(self, items: list[MultiModalItem]) -> None:
        for item in items:
            shape = (item.length, self.hidden_size)
            placeholder = torch.empty(shape, dtype=self.dtype, device="meta")
            self.cache.put(
                item.key,
                CachedItem(
                    item.modality, item.grid_thw, placeholder, item.seconds_per_grid, item.digest
                ),
            )

    def forget_all(self) -> None:
        """After the engine process missed one: its cache is not what this one thinks."""
        self.cache.clear()
