"""mrope_positions against transformers 5.23's get_rope_index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, Qwen2_5_VLModel, Qwen2VLModel

from vlmserve.models.config import ModelConfig, load_model_config
from vlmserve.models.rope import Grid, mrope_positions

HF_MODELS = {"qwen2_vl": Qwen2VLModel, "qwen2_5_vl": Qwen2_5_VLModel}

# A layout is a list of text lengths (int) and vision items ("image"/"video", grid).
Layout = list[int | tuple[str, Grid]]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def setup(request: pytest.FixtureRequest) -> tuple[ModelConfig, Any]:
    folder: Path = request.getfixturevalue(f"tiny_{request.param}")
    hf = HF_MODELS[request.param]._from_config(AutoConfig.from_pretrained(folder))
    return load_model_config(folder), hf


def build(config: ModelConfig, layout: Layout) -> list[int]:
    """Text ids are arbitrary small ints; vision items expand to placeholder runs."""
    ids: list[int] = []
    for part in layout:
        if isinstance(part, int):
            ids += list(range(10, 10 + part))
            continue
        kind, (t, h, w) = part
        token = config.image_token_id if kind == "image" else config.video_token_id
        ids += [config.vision_start_token_id, *[token] * (t * h * w // 4)]
        ids.append(config.vision_end_token_id)
    return ids


def grids(layout: Layout, kind: str) -> list[Grid]:
    return [part[1] for part in layout if isinstance(part, tuple) and part[0] == kind]


LAYOUTS: dict[str, Layout] = {
    "text": [7],
    "image-first": [("image", (1, 4, 6)), 3],
    "images": [5, ("image", (1, 4, 4)), 2, ("image", (1, 8, 2)), 4, ("image", (1, 2, 10)), 1],
    "video-long-in-time": [4, ("video", (5, 4, 2)), 3],
    "mixed": [2, ("video", (2, 6, 4)), 1, ("image", (1, 4, 4)), 3, ("video", (3, 2, 2)), 2],
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("fractional_seconds", [False, True])
def test_positions_and_delta_match_transformers(
    setup: tuple[ModelConfig, Any], layout: Layout, fractional_seconds: bool
) -> None:
    config, hf = setup
    ids, images, videos = build(config, layout), grids(layout, "image"), grids(layout, "video")
    seconds = [0.5, 1.3][: len(videos)] if fractional_seconds and videos else None
    positions, delta = mrope_positions(ids, images, videos, config, seconds)

    input_ids = torch.tensor([ids])
    types = (input_ids == config.image_token_id).int()
    types += 2 * (input_ids == config.video_token_id).int()
    extra = {}
    if seconds is not None and config.arch == "qwen2_5_vl":
        extra["second_per_grid_ts"] = torch.tensor(seconds)
    expected, expected_delta = hf.get_rope_index(
        input_ids,
        mm_token_type_ids=types,
        image_grid_thw=torch.tensor(images) if images else None,
        video_grid_thw=torch.tensor(videos) if videos else None,
        **extra,
    )
    assert torch.equal(positions, expected[:, 0])
    assert delta == int(expected_delta)


def test_placeholder_runs_must_match_the_grids(setup: tuple[ModelConfig, Any]) -> None:
    config, _ = setup
    ids = build(config, [2, ("image", (1, 4, 4)), 2])  # 4 placeholder tokens
    with pytest.raises(ValueError, match=r"grid \(1, 4, 6\) needs exactly 6 consecutive"):
        mrope_positions(ids, [(1, 4, 6)], [], config)
    with pytest.raises(ValueError, match=r"grid \(1, 2, 2\) needs exactly 1 consecutive"):
        mrope_positions(ids, [(1, 2, 2)], [], config)
    with pytest.raises(ValueError, match="1 image grids but 0 placeholder runs"):
        mrope_positions(build(config, [3]), [(1, 4, 4)], [], config)
    with pytest.raises(ValueError, match="more image placeholder runs than image grids"):
        mrope_positions(ids, [], [], config)
