"""Qwen2.5-VL: a ViT with RMSNorm blocks and a biased SwiGLU MLP that attends inside local
windows except in `fullatt_block_indexes` blocks (full attention within each frame), and an
RMSNorm patch merger, in front of the shared Qwen2 decoder.

Window attention is done by reordering the merge units so that each window is a contiguous
run of rows; the merged outputs are put back in the original order at the end.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmserve.models.config import ModelConfig, VisionConfig
from vlmserve.models.layers import GatedMLP, RMSNorm, vision_cos_sin
from vlmserve.models.vision import (
    PatchEmbed,
    PatchMerger,
    VisionAttention,
    frame_seqlens,
    grid_list,
    patch_positions,
)
from vlmserve.models.vl_model import QwenVLModel

_VISION_NORM_EPS = 1e-6


class Qwen2_5VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, _VISION_NORM_EPS)
        self.norm2 = RMSNorm(config.hidden_size, _VISION_NORM_EPS)
        self.attn = VisionAttention(config)
        self.mlp = GatedMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act, bias=True
        )

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqlens: list[int]
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, seqlens)
        return x + self.mlp(self.norm2(x))


def window_order(
    grids: list[tuple[int, int, int]], merge: int, window_size: int, patch_size: int
) -> tuple[torch.Tensor, list[int]]:
    """The merge-unit permutation that makes every window contiguous, and the windows'
    lengths in patches.

    A window covers `window_size` pixels per side, i.e. window_size / patch / merge merge
    units; windows tile each frame row-major from the top-left, the last row/column of
    windows being cut short by the frame's edge.
    """
    side = window_size // merge // patch_size
    if side < 1:
        raise ValueError(f"window_size {window_size} is smaller than one merge unit")
    order: list[torch.Tensor] = []
    seqlens: list[int] = []
    offset = 0
    for t, h, w in grids:
        rows, cols = h // merge, w // merge
        units = torch.arange(t * rows * cols).view(t, rows, cols) + offset
        for frame in range(t):
            for top in range(0, rows, side):
                for left in range(0, cols, side):
                    window = units[frame, top : top + side, left : left + side].flatten()
                    order.append(window)
                    seqlens.append(window.numel() * merge * merge)
        offset += t * rows * cols
    return torch.cat(order), seqlens


class Qwen2_5VisionTower(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if config.window_size is None:
            raise ValueError("Qwen2.5-VL's vision config needs a window_size")
        self.config = config
        self.window_size = config.window_size
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(Qwen2_5VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config, RMSNorm(config.hidden_size, _VISION_NORM_EPS))

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """[num_patches, patch_dim] -> [num_patches / merge², out_hidden_size]."""
        cfg = self.config
        grids = grid_list(grid_thw)
        unit = cfg.spatial_merge_size**2
        order, window_lens = window_order(
            grids, cfg.spatial_merge_size, self.window_size, cfg.patch_size
        )
        order = order.to(pixel_values.device)

        def to_windows(rows: torch.Tensor) -> torch.Tensor:
            return rows.view(-1, unit, rows.shape[-1])[order].flatten(0, 1)

        x = to_windows(self.patch_embed(pixel_values))
        positions = to_windows(patch_positions(grids, cfg.spatial_merge_size, x.device))
        cos, sin = vision_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        # Windows never straddle frames, so per-frame segments stay contiguous after the
        # reordering and full attention within a frame is unaffected by it.
        frame_lens = frame_seqlens(grids)
        for index, block in enumerate(self.blocks):
            full = index in cfg.fullatt_block_indexes
            x = block(x, cos, sin, frame_lens if full else window_lens)
        return self.merger(x)[torch.argsort(order)]


class Qwen2_5_VLForConditionalGeneration(QwenVLModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, Qwen2_5VisionTower(config.vision))
