"""M-RoPE position ids of a prompt: text tokens count up on all three axes; the tokens of an
image or video get (temporal, row, column) positions offset by the text position before it.

This is the rule of transformers 5.23's `get_rope_index`, including two details the engine
depends on: text after a vision item resumes at `start + max(rows, cols)` (merged units),
and the decode-time offset `mrope_delta = max(position) + 1 - len(prompt)` — so generated
token n (0-based, counting the prompt) sits at position n + mrope_delta on every axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlmserve.models.config import ModelConfig

Grid = tuple[int, int, int]


def mrope_positions(
    token_ids: Sequence[int],
    image_grid_thw: Sequence[Grid],
    video_grid_thw: Sequence[Grid],
    config: ModelConfig,
    video_seconds_per_grid: Sequence[float] | None = None,
) -> tuple[torch.Tensor, int]:
    """Positions [3, len(token_ids)] int64 and the decode offset `mrope_delta`.

    Each run of image (video) placeholder tokens takes the next grid of `image_grid_thw`
    (`video_grid_thw`) and must be exactly t*h*w/merge² tokens long. For Qwen2.5-VL videos,
    temporal positions advance by `tokens_per_second * seconds_per_grid` per temporal patch
    (`video_seconds_per_grid` defaults to 1.0 each, as in transformers).
    """
    merge = config.vision.spatial_merge_size
    placeholders = {config.image_token_id: "image", config.video_token_id: "video"}
    grids = {"image": list(image_grid_thw), "video": list(video_grid_thw)}
    used = {"image": 0, "video": 0}
    seconds = list(video_seconds_per_grid or [1.0] * len(video_grid_thw))
    if len(seconds) != len(video_grid_thw):
        raise ValueError(f"{len(seconds)} video durations for {len(video_grid_thw)} videos")

    pieces: list[torch.Tensor] = []
    next_text = 0  # position of the next text token
    i, n = 0, len(token_ids)
    while i < n:
        kind = placeholders.get(token_ids[i])
        if kind is None:
            end = i
            while end < n and token_ids[end] not in placeholders:
                end += 1
            pieces.append(torch.arange(next_text, next_text + end - i).expand(3, -1))
            next_text += end - i
            i = end
            continue
        if used[kind] >= len(grids[kind]):
            raise ValueError(f"more {kind} placeholder runs than {kind} grids ({len(grids[kind])})")
        t, h, w = grids[kind][used[kind]]
        count = t * h * w // (merge * merge)
        if list(token_ids[i : i + count]) != [token_ids[i]] * count or (
            i + count < n and token_ids[i + count] == token_ids[i]
        ):
            raise ValueError(
                f"{kind} {used[kind]} with grid {(t, h, w)} needs exactly {count} "
                f"consecutive placeholder tokens at index {i}"
            )
        interval = 1.0
        if kind == "video" and config.arch == "qwen2_5_vl":
            interval = (config.vision.tokens_per_second or 1.0) * seconds[used[kind]]
        pieces.append(_grid_positions(next_text, t, h // merge, w // merge, interval))
        used[kind] += 1
        next_text += max(h, w) // merge
        i += count
    for kind, grid_list in grids.items():
        if used[kind] != len(grid_list):
            raise ValueError(f"{len(grid_list)} {kind} grids but {used[kind]} placeholder runs")
    if not pieces:
        return torch.zeros(3, 0, dtype=torch.long), 0
    positions = torch.cat(pieces, dim=1).long()
    return positions, int(positions.max()) + 1 - n


def _grid_positions(start: int, t: int, rows: int, cols: int, interval: float) -> torch.Tensor:
    # Float multiply then truncate, like the reference, so fractional spacing rounds alike.
    temporal = (torch.arange(t) * interval).long() + start
    grid = torch.meshgrid(
        temporal, torch.arange(rows) + start, torch.arange(cols) + start, indexing="ij"
    )
    return torch.stack(grid).reshape(3, -1)
