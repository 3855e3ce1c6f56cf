"""Prompt inputs -> what the engine runs: token ids with expanded vision placeholders,
preprocessed media items (or cache hits by UUID) and M-RoPE positions.

Runs on the caller's thread (the async engine uses a worker thread), never on the engine
loop. Accepts vLLM's prompt forms: a string, `{"prompt": ...}` or
`{"prompt_token_ids": ...}`, each with optional `multi_modal_data` / `multi_modal_uuids`.
Every problem is an `InputError` naming the field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from vlmserve.engine.mm_cache import MultiModalCache
from vlmserve.engine.sequence import MultiModalItem
from vlmserve.models.config import ModelConfig
from vlmserve.models.hf_tokenizer import TokenizerBundle
from vlmserve.models.rope import mrope_positions
from vlmserve.multimodal.processor import ImageProcessorConfig, process_image, to_rgb

MODALITIES = ("image",)


class InputError(ValueError):
    """Bad input to one request; `param` names the field. Other requests are unaffected."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass
class ProcessedInput:
    prompt: str | None
    token_ids: list[int]
    mm_items: list[MultiModalItem]
    mrope_positions: torch.Tensor
    mrope_delta: int


def content_hash(image: Image.Image) -> str:
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return "sha256:" + digest.hexdigest()


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class InputProcessor:
    def __init__(
        self,
        tokenizer: TokenizerBundle,
        model_config: ModelConfig,
        image_config: ImageProcessorConfig,
        mm_cache: MultiModalCache,
        limit_mm_per_prompt: dict[str, int],
        max_model_len: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.config = model_config
        self.image_config = image_config
        self.mm_cache = mm_cache
        self.limits = limit_mm_per_prompt
        self.max_model_len = max_model_len
        merge = model_config.vision.spatial_merge_size
        self.merge_area = merge * merge

    def process(self, prompt: str | dict[str, Any]) -> ProcessedInput:
        text, ids, mm_data, mm_uuids = self._parse(prompt)
        if ids is None:
            assert text is not None
            ids = self.tokenizer.encode(text)
        if not ids:
            raise InputError("the prompt is empty", "prompt")
        for key in set(mm_data) | set(mm_uuids):
            if key not in MODALITIES:
                raise InputError(
                    f"multi_modal_data modality {key!r} is not supported (supported: image)",
                    "multi_modal_data",
                )
        images = _as_list(mm_data.get("image"))
        uuids = _as_list(mm_uuids.get("image"))
        if uuids and len(uuids) != len(images) and images:
            raise InputError(
                f"{len(uuids)} image uuids given for {len(images)} images", "multi_modal_uuids"
            )
        if not images:
            images = [None] * len(uuids)
        uuids = uuids or [None] * len(images)
        limit = self.limits.get("image", 0)
        if len(images) > limit:
            raise InputError(
                f"{len(images)} images in one prompt; at most {limit} are allowed",
                "multi_modal_data",
            )
        slots = [i for i, t in enumerate(ids) if t == self.config.image_token_id]
        if len(slots) != len(images):
            raise InputError(
                f"the prompt has {len(slots)} image placeholders but {len(images)} images "
                "were given",
                "multi_modal_data",
            )
        if any(t == self.config.video_token_id for t in ids):
            raise InputError("video placeholders need video input, which was not given", "prompt")
        items = [self._item(i, img, uuid) for i, (img, uuid) in enumerate(zip(images, uuids))]
        expanded, items = self._expand(ids, slots, items)
        if len(expanded) >= self.max_model_len:
            raise InputError(
                f"the prompt is {len(expanded)} tokens (images included); this model's context "
                f"is {self.max_model_len} tokens and at least one must be left to generate",
                "prompt",
            )
        positions, delta = mrope_positions(
            expanded, [item.grid_thw for item in items], [], self.config
        )
        return ProcessedInput(text, expanded, items, positions, delta)

    def _parse(
        self, prompt: str | dict[str, Any]
    ) -> tuple[str | None, list[int] | None, dict[str, Any], dict[str, Any]]:
        if isinstance(prompt, str):
            return prompt, None, {}, {}
        if not isinstance(prompt, dict):
            raise InputError("a prompt must be a string or a dict", "prompt")
        unknown = set(prompt) - {
            "prompt",
            "prompt_token_ids",
            "multi_modal_data",
            "multi_modal_uuids",
        }
        if unknown:
            raise InputError(f"unknown prompt fields: {sorted(unknown)}", "prompt")
        text, ids = prompt.get("prompt"), prompt.get("prompt_token_ids")
        if (text is None) == (ids is None):
            raise InputError("give exactly one of 'prompt' and 'prompt_token_ids'", "prompt")
        if ids is not None:
            vocab = self.config.vocab_size
            if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
                raise InputError(
                    f"prompt_token_ids must be ints in [0, {vocab})", "prompt_token_ids"
                )
            ids = list(ids)
        elif not isinstance(text, str):
            raise InputError("'prompt' must be a string", "prompt")
        mm_data = prompt.get("multi_modal_data") or {}
        mm_uuids = prompt.get("multi_modal_uuids") or {}
        if not isinstance(mm_data, dict) or not isinstance(mm_uuids, dict):
            raise InputError(
                "multi_modal_data and multi_modal_uuids must be dicts", "multi_modal_data"
            )
        return text, ids, mm_data, mm_uuids

    def _item(self, index: int, image: Any, uuid: str | None) -> MultiModalItem:
        param = f"multi_modal_data.image[{index}]"
        if image is None:
            if uuid is None:
                raise InputError(f"{param} is None and has no uuid", param)
            cached = self.mm_cache.get(uuid)
            if cached is None:
                raise InputError(
                    f"image uuid {uuid!r} is not in the media cache; send the image data again",
                    param,
                )
            return MultiModalItem("image", uuid, 0, 0, cached.grid_thw, None, cached.embeddings)
        if not isinstance(image, Image.Image):
            raise InputError(f"{param} must be a PIL image, got {type(image).__name__}", param)
        image = to_rgb(image)  # transparency onto white, as transformers does
        key = uuid or content_hash(image)
        cached = self.mm_cache.get(key)
        if cached is not None:
            return MultiModalItem("image", key, 0, 0, cached.grid_thw, None, cached.embeddings)
        pixels, grid = process_image(image, self.image_config)
        return MultiModalItem("image", key, 0, 0, grid, pixels)

    def _expand(
        self, ids: list[int], slots: list[int], items: list[MultiModalItem]
    ) -> tuple[list[int], list[MultiModalItem]]:
        out: list[int] = []
        prev = 0
        for slot, item in zip(slots, items):
            out.extend(ids[prev:slot])
            t, h, w = item.grid_thw
            item.offset = len(out)
            item.length = t * h * w // self.merge_area
            out.extend([ids[slot]] * item.length)
            prev = slot + 1
        out.extend(ids[prev:])
        return out, items
