"""Our Qwen-VL preprocessing against transformers' `Qwen2VLImageProcessorPil`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_resize

from vlmserve.multimodal.processor import (
    LOW_DETAIL_MAX_PIXELS,
    ImageProcessorConfig,
    detail_max_pixels,
    load_image_processor_config,
    process_image,
    process_video,
    smart_resize,
    to_rgb,
    with_max_pixels,
)

CONFIG = ImageProcessorConfig()
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def hf() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil()  # Qwen2-VL defaults, like ImageProcessorConfig()


def noisy_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


def assert_matches_hf(hf: Qwen2VLImageProcessorPil, original: Image.Image) -> None:
    expected = hf(original, return_tensors="pt")
    pixels, grid = process_image(to_rgb(original), CONFIG)
    assert list(grid) == expected["image_grid_thw"][0].tolist()
    assert pixels.dtype == torch.float32
    assert pixels.shape == expected["pixel_values"].shape
    assert (pixels - expected["pixel_values"]).abs().max().item() < TOLERANCE


SIZES = [(1, 1), (28, 28), (56, 56), (57, 111), (100, 190), (640, 480), (1500, 1100), (30, 5000)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_rgb_images_match_transformers(hf: Qwen2VLImageProcessorPil, size: tuple[int, int]) -> None:
    assert_matches_hf(hf, noisy_image(*size))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P"])
def test_other_modes_converted_like_transformers(hf: Qwen2VLImageProcessorPil, mode: str) -> None:
    image = noisy_image(90, 70, mode="L" if mode == "P" else mode, seed=3)
    if mode == "P":
        image = image.convert("P")
        image.info["transparency"] = 0
    assert_matches_hf(hf, image)


def test_non_rgb_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected an RGB image, got mode 'L'"):
        process_image(noisy_image(56, 56, mode="L"), CONFIG)


@pytest.mark.parametrize(
    "hw", [(1, 1), (28, 28), (27, 29), (14, 14 * 199), (3000, 4000), (1080, 1920), (42, 70)]
)
def test_smart_resize_matches_transformers(hw: tuple[int, int]) -> None:
    ours = smart_resize(*hw, 28, CONFIG.min_pixels, CONFIG.max_pixels)
    assert ours == hf_resize(
        *hw, factor=28, min_pixels=CONFIG.min_pixels, max_pixels=CONFIG.max_pixels
    )
    assert ours[0] % 28 == 0 and ours[1] % 28 == 0


def test_extreme_aspect_ratio_is_rejected() -> None:
    with pytest.raises(ValueError, match="aspect ratio of 5000x20 is over 200:1"):
        smart_resize(20, 5000, 28, CONFIG.min_pixels, CONFIG.max_pixels)


def test_video_of_two_equal_frames_equals_the_image(hf: Qwen2VLImageProcessorPil) -> None:
    frame = noisy_image(100, 60)
    pixels, grid = process_video([frame, frame.copy()], CONFIG)
    image_pixels, image_grid = process_image(frame, CONFIG)
    assert grid == image_grid
    assert torch.equal(pixels, image_pixels)


def test_video_frames_are_grouped_and_padded() -> None:
    frames = [noisy_image(56, 56, seed=i) for i in range(3)]  # padded to 4 by repeating frame 2
    pixels, (t, h, w) = process_video(frames, CONFIG)
    assert (t, h, w) == (2, 4, 4)
    per_frame = [process_image(f, CONFIG)[0] for f in frames]  # each: frame repeated twice

    def temporal_slice(rows: torch.Tensor, k: int) -> torch.Tensor:
        # Row layout is (channel, frame, y, x): frame k's part of every channel.
        return rows.view(-1, 3, 2, 14 * 14)[:, :, k]

    first, second = pixels[:16], pixels[16:]
    assert torch.equal(temporal_slice(first, 0), temporal_slice(per_frame[0], 0))
    assert torch.equal(temporal_slice(first, 1), temporal_slice(per_frame[1], 0))
    assert torch.equal(temporal_slice(second, 0), temporal_slice(per_frame[2], 0))
    assert torch.equal(temporal_slice(second, 1), temporal_slice(per_frame[2], 0))


def test_video_frames_must_share_a_size() -> None:
    with pytest.raises(ValueError, match="video frames differ in size"):
        process_video([noisy_image(56, 56), noisy_image(84, 56)], CONFIG)


def test_config_file_formats(tmp_path: Path) -> None:
    assert load_image_processor_config(tmp_path) == ImageProcessorConfig()
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 100, "longest_edge": 2000}, "merge_size": 2})
    )
    config = load_image_processor_config(tmp_path)
    assert (config.min_pixels, config.max_pixels) == (100, 2000)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"min_pixels": 3136, "max_pixels": 50000, "image_mean": [0.5, 0.5, 0.5]})
    )
    config = load_image_processor_config(tmp_path)
    assert (config.max_pixels, config.image_mean) == (50000, (0.5, 0.5, 0.5))


def test_smaller_max_pixels_from_config_matches_transformers(tiny_qwen2_vl: Path) -> None:
    config = load_image_processor_config(tiny_qwen2_vl)
    hf = Qwen2VLImageProcessorPil.from_pretrained(tiny_qwen2_vl, max_pixels=28 * 28 * 16)
    image = noisy_image(400, 300)
    expected = hf(image, return_tensors="pt")
    small = ImageProcessorConfig(**{**config.__dict__, "max_pixels": 28 * 28 * 16})
    pixels, grid = process_image(image, small)
    assert list(grid) == expected["image_grid_thw"][0].tolist()
    assert (pixels - expected["pixel_values"]).abs().max().item() < TOLERANCE


def test_detail_budgets(hf: Qwen2VLImageProcessorPil) -> None:
    assert detail_max_pixels("low") == LOW_DETAIL_MAX_PIXELS
    assert detail_max_pixels("high") is None and detail_max_pixels("auto") is None
    assert detail_max_pixels(None) is None
    with pytest.raises(ValueError, match="detail must be one of auto, low, high"):
        detail_max_pixels("medium")
    low = with_max_pixels(CONFIG, LOW_DETAIL_MAX_PIXELS)
    assert (low.max_pixels, low.min_pixels) == (LOW_DETAIL_MAX_PIXELS, CONFIG.min_pixels)
    # A budget never rises above the model's nor falls below its minimum.
    assert with_max_pixels(CONFIG, 10**9).max_pixels == CONFIG.max_pixels
    assert with_max_pixels(CONFIG, 1).max_pixels == CONFIG.min_pixels
    # The low budget resizes as transformers does with that max_pixels.
    image = Image.new("RGB", (1000, 700), "white")
    _, grid = process_image(image, low)
    expected = hf_resize(
        700, 1000, factor=28, min_pixels=CONFIG.min_pixels, max_pixels=low.max_pixels
    )
    assert (grid[1] * 14, grid[2] * 14) == expected
    assert grid[1] * grid[2] // 4 <= 256
