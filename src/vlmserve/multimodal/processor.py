"""Qwen-VL image and video preprocessing without torchvision: resize to a multiple of the
merge unit (`smart_resize`), PIL bicubic resampling, rescale, normalize, and patchify into
the rows the vision tower expects.

The arithmetic follows transformers' `Qwen2VLImageProcessorPil` step by step (uint8
resize, float64 rescale cast to float32, float32 normalize) so pixel values match it.
Images must already be RGB: callers convert other modes first, with `to_rgb` to match
the reference on transparent images.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MAX_ASPECT_RATIO = 200

# OpenAI's `detail: "low"`: at most 256 image tokens, a 448×448-pixel area (Qwen-VL's merge
# unit is 28×28 pixels per token) — the low end of the range Qwen's model cards recommend.
LOW_DETAIL_MAX_PIXELS = 256 * 28 * 28
DETAILS = ("auto", "low", "high")


def detail_max_pixels(detail: str | None) -> int | None:
    """The pixel budget an image's `detail` asks for; None: the model's own (high, auto)."""
    if detail not in (None, *DETAILS):
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}; got {detail!r}")
    return LOW_DETAIL_MAX_PIXELS if detail == "low" else None


@dataclass(frozen=True)
class ImageProcessorConfig:
    """Defaults are Qwen2-VL's."""

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = _CLIP_MEAN
    image_std: tuple[float, float, float] = _CLIP_STD
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this: one merge unit of patches."""
        return self.patch_size * self.merge_size


# One image or video ready for the vision tower: pixel values
# [t*h*w, C * temporal_patch_size * patch_size²] float32 and the grid (t, h, w) in patches.
VisionInput = tuple[torch.Tensor, tuple[int, int, int]]


def load_image_processor_config(folder: str | Path) -> ImageProcessorConfig:
    """Read `folder`/preprocessor_config.json; Qwen2-VL defaults when the file is absent."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return ImageProcessorConfig()
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    defaults = ImageProcessorConfig()
    # transformers-5 saves the pixel bounds as size.shortest_edge / size.longest_edge.
    size = raw.get("size") or {}
    return ImageProcessorConfig(
        min_pixels=int(raw.get("min_pixels", size.get("shortest_edge", defaults.min_pixels))),
        max_pixels=int(raw.get("max_pixels", size.get("longest_edge", defaults.max_pixels))),
        patch_size=int(raw.get("patch_size", defaults.patch_size)),
        temporal_patch_size=int(raw.get("temporal_patch_size", defaults.temporal_patch_size)),
        merge_size=int(raw.get("merge_size", defaults.merge_size)),
        image_mean=_triple(raw.get("image_mean", defaults.image_mean), "image_mean", path),
        image_std=_triple(raw.get("image_std", defaults.image_std), "image_std", path),
        rescale_factor=float(raw.get("rescale_factor", defaults.rescale_factor)),
    )


def with_max_pixels(config: ImageProcessorConfig, max_pixels: int | None) -> ImageProcessorConfig:
    """`config` with its pixel budget lowered to `max_pixels`, never below its min_pixels nor
    above its own budget."""
    if max_pixels is None:
        return config
    budget = max(config.min_pixels, min(max_pixels, config.max_pixels))
    return dataclasses.replace(config, max_pixels=budget)


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The size closest to (height, width) with both sides multiples of `factor` and an
    area within [min_pixels, max_pixels], keeping the aspect ratio as well as possible."""
    if min(height, width) < 1:
        raise ValueError(f"image has no pixels: {width}x{height}")
    if max(height, width) / min(height, width) > _MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio of {width}x{height} is over {_MAX_ASPECT_RATIO}:1, too extreme to process"
        )
    # Python's round (half to even) on purpose: it is what the reference uses.
    new_h = round(height / factor) * factor
    new_w = round(width / factor) * factor
    if new_h * new_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / shrink / factor) * factor)
        new_w = max(factor, math.floor(width / shrink / factor) * factor)
    elif new_h * new_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * grow / factor) * factor
        new_w = math.ceil(width * grow / factor) * factor
    return new_h, new_w


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode; transparency is composited onto white, as transformers does
    (a plain `convert("RGB")` would expose whatever colour transparent pixels hold)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def process_image(image: Image.Image, config: ImageProcessorConfig) -> VisionInput:
    """One RGB image -> one temporal patch (the frame repeated temporal_patch_size times)."""
    height, width = smart_resize(
        image.height, image.width, config.factor, config.min_pixels, config.max_pixels
    )
    frame = _normalized_frame(image, height, width, config)
    frames = np.broadcast_to(frame, (config.temporal_patch_size, *frame.shape))
    return _patchify(frames, config)


def process_video(frames: list[Image.Image], config: ImageProcessorConfig) -> VisionInput:
    """Equal-size RGB frames -> temporal patches of `temporal_patch_size` frames; the last
    frame is repeated to fill the final patch."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    sizes = {frame.size for frame in frames}
    if len(sizes) != 1:
        raise ValueError(f"video frames differ in size: {sorted(sizes)}")
    first = frames[0]
    height, width = smart_resize(
        first.height, first.width, config.factor, config.min_pixels, config.max_pixels
    )
    arrays = [_normalized_frame(frame, height, width, config) for frame in frames]
    arrays += [arrays[-1]] * (-len(arrays) % config.temporal_patch_size)
    return _patchify(np.stack(arrays), config)


def _normalized_frame(
    image: Image.Image, height: int, width: int, config: ImageProcessorConfig
) -> np.ndarray:
    """[C, height, width] float32."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r} (convert it first)")
    resized = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    pixels = (np.asarray(resized).astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


def _patchify(frames: np.ndarray, config: ImageProcessorConfig) -> VisionInput:
    """frames [T, C, H, W] (T a multiple of temporal_patch_size) -> rows ordered by temporal
    patch, then merge block (row-major), then patch within the block; each row is
    (channel, frame, y, x)."""
    num_frames, channels, height, width = frames.shape
    p, m, tp = config.patch_size, config.merge_size, config.temporal_patch_size
    grid_t, grid_h, grid_w = num_frames // tp, height // p, width // p
    blocks = frames.reshape(grid_t, tp, channels, grid_h // m, m, p, grid_w // m, m, p)
    blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = np.ascontiguousarray(blocks).reshape(grid_t * grid_h * grid_w, channels * tp * p * p)
    return torch.from_numpy(rows), (grid_t, grid_h, grid_w)


def _triple(value: Any, key: str, path: Path) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError(f"{path}: {key} must list 3 channel values, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))
