"""Prompt inputs -> what the engine runs: token ids with expanded vision placeholders,
preprocessed media items (or cache hits by UUID) and M-RoPE positions.

Runs on the caller's thread (the async engine uses a worker thread), never on the engine
loop. Takes a typed `Prompt` (vLLM's dict forms are converted before, in prompts.py).
Every problem is an `InputError` naming the field (the dict form's names, which the
offline API documents).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from PIL import Image

from vlmserve.config import MODALITIES
from vlmserve.engine.mm_cache import MultiModalCache, cache_key
from vlmserve.engine.sequence import MultiModalItem
from vlmserve.models.config import ModelConfig
from vlmserve.models.hf_tokenizer import TokenizerBundle
from vlmserve.models.rope import mrope_positions
from vlmserve.multimodal.processor import (
    ImageProcessorConfig,
    VisionInput,
    process_image,
    process_video,
    to_rgb,
    with_max_pixels,
)
from vlmserve.structured import CompiledGrammar
from vlmserve.types import MediaInput, Prompt

# A text prompt longer than max_model_len x this many characters is refused before it is
# tokenized: tokenizing costs ~1-4 s per MiB here, and such a prompt would be refused for
# its token count anyway. Text averages 3-5 characters per token (English ~4, code ~3.4 with
# these tokenizers); only pathological text (long runs of one character) that would still
# have fit is refused by this bound. See docs/engine.md.
MAX_CHARS_PER_TOKEN = 8
# The sampling rate assumed for a video given without one: transformers' Qwen2.5-VL default.
DEFAULT_VIDEO_FPS = 2.0


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
    grammar: CompiledGrammar | None = None  # compiled with the request's sampling params
    cache_salt: str | None = None


def content_hash(images: list[Image.Image], extra: str = "") -> str:
    """Names media by content: an image is a one-frame list; `extra` adds what else shapes
    the item (a video's sampling rate)."""
    digest = hashlib.sha256(extra.encode())
    for image in images:
        digest.update(f"{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
    return "sha256:" + digest.hexdigest()


def _video_frames(frames: Any, fps: Any, param: str) -> tuple[list[Image.Image], float]:
    """A video's frames (a list of PIL images) and sampling rate, checked -> RGB frames and
    the rate they were sampled at."""
    if fps is None:
        fps = DEFAULT_VIDEO_FPS
    is_number = isinstance(fps, (int, float)) and not isinstance(fps, bool)
    if not is_number or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"{param}.fps must be a positive number, got {fps!r}", param)
    if not isinstance(frames, (list, tuple)) or not frames:
        raise InputError(f"{param} must be a non-empty list of PIL frames", param)
    for i, frame in enumerate(frames):
        if not isinstance(frame, Image.Image):
            raise InputError(
                f"{param} frame {i} must be a PIL image, got {type(frame).__name__}", param
            )
    return [to_rgb(frame) for frame in frames], float(fps)


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
        self.max_prompt_chars = max_model_len * MAX_CHARS_PER_TOKEN
        merge = model_config.vision.spatial_merge_size
        self.merge_area = merge * merge

    def process(self, prompt: Prompt) -> ProcessedInput:
        text, ids = prompt.text, prompt.token_ids
        if (text is None) == (ids is None):
            raise InputError("give exactly one of 'prompt' and 'prompt_token_ids'", "prompt")
        if ids is not None:
            # Placeholder expansion only adds tokens: a list this long can never fit.
            if len(ids) >= self.max_model_len:
                raise InputError(
                    f"the prompt is {len(ids)} tokens; this model's context is "
                    f"{self.max_model_len} tokens and at least one must be left to generate",
                    "prompt_token_ids",
                )
            vocab = self.config.vocab_size
            if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
                raise InputError(
                    f"prompt_token_ids must be ints in [0, {vocab})", "prompt_token_ids"
                )
            ids = list(ids)
        elif not isinstance(text, str):
            raise InputError("'prompt' must be a string", "prompt")
        elif len(text) > self.max_prompt_chars:
            raise InputError(
                f"the prompt is {len(text)} characters; with a context of "
                f"{self.max_model_len} tokens at most {self.max_prompt_chars} are accepted "
                f"({MAX_CHARS_PER_TOKEN} per token), so it cannot fit",
                "prompt",
            )
        else:
            ids = self.tokenizer.encode(text)
        if not ids:
            raise InputError("the prompt is empty", "prompt")
        for item in prompt.media:
            if item.modality not in MODALITIES:
                raise InputError(
                    f"multi_modal_data modality {item.modality!r} is not supported "
                    f"(supported: {', '.join(MODALITIES)})",
                    "multi_modal_data",
                )
        placeholders = {self.config.image_token_id: "image", self.config.video_token_id: "video"}
        slots = [(i, placeholders[t]) for i, t in enumerate(ids) if t in placeholders]
        media = {m: self._media(m, prompt.media, slots) for m in MODALITIES}
        # Items in prompt order: the placeholders decide, whatever the modality.
        taken = dict.fromkeys(MODALITIES, 0)
        items = []
        for _, modality in slots:
            index = taken[modality]
            taken[modality] += 1
            items.append(self._item(index, media[modality][index], prompt.cache_salt))
        expanded, items = self._expand(ids, [slot for slot, _ in slots], items)
        if len(expanded) >= self.max_model_len:
            raise InputError(
                f"the prompt is {len(expanded)} tokens (media included); this model's context "
                f"is {self.max_model_len} tokens and at least one must be left to generate",
                "prompt",
            )
        videos = [item for item in items if item.modality == "video"]
        positions, delta = mrope_positions(
            expanded,
            [item.grid_thw for item in items if item.modality == "image"],
            [item.grid_thw for item in videos],
            self.config,
            [item.seconds_per_grid for item in videos],
        )
        if prompt.cache_salt is not None and not isinstance(prompt.cache_salt, str):
            raise InputError("'cache_salt' must be a string", "cache_salt")
        return ProcessedInput(text, expanded, items, positions, delta, cache_salt=prompt.cache_salt)

    def _media(
        self, modality: str, media: list[MediaInput], slots: list[tuple[int, str]]
    ) -> list[MediaInput]:
        """The prompt's items of `modality`, checked against the limit and the placeholders."""
        items = [item for item in media if item.modality == modality]
        limit = self.limits.get(modality, 0)
        if len(items) > limit:
            raise InputError(
                f"{len(items)} {modality}s in one prompt; at most {limit} are allowed",
                "multi_modal_data",
            )
        count = sum(1 for _, m in slots if m == modality)
        if count != len(items):
            raise InputError(
                f"the prompt has {count} {modality} placeholders but {len(items)} {modality}s "
                "were given",
                "multi_modal_data",
            )
        return items

    def _item(self, index: int, media: MediaInput, namespace: str | None) -> MultiModalItem:
        """`namespace`: the request's cache salt; UUIDs and content hashes are looked up in
        it only (see mm_cache.py)."""
        modality, data, uuid = media.modality, media.data, media.uuid
        param = f"multi_modal_data.{modality}[{index}]"
        image_config, budget = self._pixel_budget(media, param)
        if data is None:
            if uuid is None:
                raise InputError(f"{param} is None and has no uuid", param)
            cached = self.mm_cache.get(cache_key(namespace, uuid + budget))
            if cached is None:
                at = f" at a budget of {image_config.max_pixels} pixels" if budget else ""
                raise InputError(
                    f"{modality} uuid {uuid!r} is not in the media cache{at}; "
                    f"send the {modality} data again",
                    param,
                )
            if cached.modality != modality:
                raise InputError(
                    f"uuid {uuid!r} names a cached {cached.modality}, not a {modality}", param
                )
            return MultiModalItem(
                modality,
                cache_key(namespace, uuid + budget),
                0,
                0,
                cached.grid_thw,
                None,
                cached.embeddings,
                cached.seconds_per_grid,
                cached.digest,
            )
        preprocess: Callable[[], VisionInput]
        if modality == "image":
            if not isinstance(data, Image.Image):
                raise InputError(f"{param} must be a PIL image, got {type(data).__name__}", param)
            image = to_rgb(data)  # transparency onto white, as transformers does
            digest, seconds = content_hash([image]), 1.0
            preprocess = partial(process_image, image, image_config)
        else:
            frames, fps = _video_frames(data, media.fps, param)
            # The sampling rate is part of the hash: it moves Qwen2.5-VL's temporal positions.
            digest = content_hash(frames, f"fps={fps!r}")
            seconds = self.image_config.temporal_patch_size / fps
            preprocess = partial(process_video, frames, self.image_config)
        key = cache_key(namespace, (uuid or digest) + budget)
        # Data sent under a cached UUID must be what the UUID names: other data is computed
        # (and replaces the entry), never answered from the cache.
        cached = self.mm_cache.get(key, digest)
        if cached is not None:
            return MultiModalItem(
                modality, key, 0, 0, cached.grid_thw, None, cached.embeddings, seconds, digest
            )
        try:
            pixels, grid = preprocess()
        except ValueError as exc:  # sizes the processor cannot take: the caller's input
            raise InputError(f"{param}: {exc}", param) from exc
        return MultiModalItem(modality, key, 0, 0, grid, pixels, None, seconds, digest)

    def _pixel_budget(self, media: MediaInput, param: str) -> tuple[ImageProcessorConfig, str]:
        """The processor settings for this item and what its cache key adds for them: an
        image at a lower pixel budget has other embeddings (and fewer tokens), so it must
        never share a cache entry (or prefix-cache blocks) with the full-budget one."""
        if media.max_pixels is None:
            return self.image_config, ""
        if media.modality != "image":
            raise InputError(f"{param}: max_pixels applies to images only", param)
        if not isinstance(media.max_pixels, int) or media.max_pixels < 1:
            raise InputError(f"{param}: max_pixels must be a positive int", param)
        config = with_max_pixels(self.image_config, media.max_pixels)
        if config.max_pixels == self.image_config.max_pixels:
            return config, ""
        return config, f"@max_pixels={config.max_pixels}"

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
