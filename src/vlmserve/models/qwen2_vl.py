"""Qwen2-VL: a ViT with LayerNorm blocks and a quick-GELU MLP, full attention within each
frame, and a LayerNorm patch merger, in front of the shared Qwen2 decoder."""

from __future__ import annotations

import torch
from torch import nn

from vlmserve.models.config import ModelConfig, VisionConfig
from vlmserve.models.layers import activation, vision_cos_sin
from vlmserve.models.vision import (
    PatchEmbed,
    PatchMerger,
    VisionAttention,
    frame_seqlens,
    grid_list,
    patch_positions,
)
from vlmserve.models.vl_model import QwenVLModel

# Both Qwen2-VL vision norms use this eps regardless of the config (as in the reference).
_VISION_NORM_EPS = 1e-6


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Qwen2VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=_VISION_NORM_EPS)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=_VISION_NORM_EPS)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqlens: list[int]
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, seqlens)
        return x + self.mlp(self.norm2(x))


class Qwen2VisionTower(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(Qwen2VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config, nn.LayerNorm(config.hidden_size, eps=_VISION_NORM_EPS))

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """[num_patches, patch_dim] -> [num_patches / merge², out_hidden_size]."""
        cfg = self.config
        grids = grid_list(grid_thw)
        x = self.patch_embed(pixel_values)
        positions = patch_positions(grids, cfg.spatial_merge_size, x.device)
        cos, sin = vision_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        seqlens = frame_seqlens(grids)
        for block in self.blocks:
            x = block(x, cos, sin, seqlens)
        return self.merger(x)


class Qwen2VLForConditionalGeneration(QwenVLModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, Qwen2VisionTower(config.vision))
