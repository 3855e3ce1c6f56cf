"""Fusing the decoder's projections (q/k/v, gate/up) changes no output bit: whole-model
forwards (prompt, then a batch of decodes through the paged cache) and the vision tower,
before and after, in float32 and bfloat16."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.models.paged import Chunk, PagedKV, run
from vlmserve.models.decoder import DecoderAttention, fuse_projections
from vlmserve.models.layers import GatedMLP
from vlmserve.models.loader import load_model
from vlmserve.models.vl_model import QwenVLModel


def forward_twice(model: QwenVLModel, dtype: torch.dtype) -> list[torch.Tensor]:
    """Logits of two prompts (different lengths, one step) and of one decode step each."""
    kv = PagedKV(model, num_blocks=16, block_size=4, dtype=dtype)
    prompts = [list(range(30, 41)), list(range(50, 56))]
    tables = [kv.allocate(len(p) + 1) for p in prompts]
    first = run(
        model,
        kv,
        [
            Chunk(p, torch.arange(len(p)).expand(3, -1), 0, table)
            for p, table in zip(prompts, tables, strict=True)
        ],
    )
    decode = run(
        model,
        kv,
        [
            Chunk([7 + i], torch.full((3, 1), len(p)), len(p), table)
            for i, (p, table) in enumerate(zip(prompts, tables, strict=True))
        ],
    )
    return [first, decode]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_fused_projections_change_no_output(
    arch: str, dtype: torch.dtype, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(f"tiny_{arch}")
    model, config = load_model(str(folder), dtype, torch.device("cpu"))
    assert isinstance(model, QwenVLModel)
    fused = copy.deepcopy(model)
    targets = [m for m in fused.modules() if isinstance(m, DecoderAttention | GatedMLP)]
    assert fuse_projections(fused) == len(targets) > 0
    assert all(
        getattr(m, "qkv_proj", None) is not None or getattr(m, "gate_up_proj", None) is not None
        for m in targets
    )
    for before, after in zip(forward_twice(model, dtype), forward_twice(fused, dtype), strict=True):
        assert torch.equal(before, after)
    vision = config.vision
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixels = torch.randn(16, patch, generator=torch.Generator().manual_seed(0)).to(dtype)
    grid = torch.tensor([[1, 4, 4]])
    with torch.inference_mode():
        assert torch.equal(
            model.embed_multimodal(pixels, grid)[0], fused.embed_multimodal(pixels, grid)[0]
        )
