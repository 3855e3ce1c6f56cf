"""Vision-tower pieces both Qwen-VL generations share: patch embedding, non-causal
attention over independent segments (frames or windows), the 2x2 patch merger, and the
patch-grid bookkeeping (rotary positions, per-frame segment lengths).

The tower sees N items (images or videos) concatenated; each item's patches arrive
grouped by `spatial_merge_size`² blocks (the processor's order), which is why positions
are laid out block-major and why the merger can simply view groups of rows as one vector.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmserve.models.attention import dense_attention
from vlmserve.models.config import VisionConfig
from vlmserve.models.layers import apply_rotary


class PatchEmbed(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        # Kept as a Conv3d so the weight has the checkpoint's 5-D shape; forward never
        # convolves (see below).
        self.proj = nn.Conv3d(
            config.in_channels, config.hidden_size, kernel_size=kernel, stride=kernel, bias=False
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Each row is one whole patch and stride == kernel, so the convolution is a plain
        # matmul with the flattened kernel: cheaper than a Conv3d call on CPU and GPU.
        weight = self.proj.weight.flatten(1)
        return pixel_values.to(weight.dtype) @ weight.t()


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqlens: list[int]
    ) -> torch.Tensor:
        """x: [N, dim]; cos/sin: float32 [N, head_dim]; attention stays inside each
        consecutive segment of `seqlens` rows."""
        tokens = x.shape[0]
        q, k, v = self.qkv(x).view(tokens, 3, self.num_heads, self.head_dim).unbind(1)
        # RoPE in float32 then back, as the reference does, so bf16 runs match it.
        q = apply_rotary(q.float(), cos, sin).to(x.dtype)
        k = apply_rotary(k.float(), cos, sin).to(x.dtype)
        scale = self.head_dim**-0.5
        outputs = [
            dense_attention(qs, ks, vs, scale, causal=False)
            for qs, ks, vs in zip(q.split(seqlens), k.split(seqlens), v.split(seqlens), strict=True)
        ]
        return self.proj(torch.cat(outputs).reshape(tokens, -1))


class PatchMerger(nn.Module):
    """Norm each patch, concatenate each merge block's patches, project to the decoder."""

    def __init__(self, config: VisionConfig, norm: nn.Module) -> None:
        super().__init__()
        self.merged_dim = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = norm
        # A Sequential so the tensor names are mlp.0 / mlp.2 like the checkpoints'.
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_dim, self.merged_dim),
            nn.GELU(),
            nn.Linear(self.merged_dim, config.out_hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.merged_dim))


def grid_list(grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
    return [(int(t), int(h), int(w)) for t, h, w in grid_thw.tolist()]


def patch_positions(
    grids: list[tuple[int, int, int]], merge: int, device: torch.device
) -> torch.Tensor:
    """[num_patches, 2] (row, column) of every patch, in the processor's block-major order."""
    rows = []
    for t, h, w in grids:
        hpos = torch.arange(h, device=device)[:, None].expand(h, w)
        wpos = torch.arange(w, device=device)[None, :].expand(h, w)
        pos = torch.stack((hpos, wpos), dim=-1)  # [h, w, 2]
        pos = pos.reshape(h // merge, merge, w // merge, merge, 2).transpose(1, 2).reshape(-1, 2)
        rows.append(pos.repeat(t, 1))
    return torch.cat(rows)


def frame_seqlens(grids: list[tuple[int, int, int]]) -> list[int]:
    """Full attention spans one frame: every temporal patch of a video is its own segment."""
    return [h * w for t, h, w in grids for _ in range(t)]
