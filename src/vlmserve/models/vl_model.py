"""`QwenVLModel`: the `VLModel` implementation both Qwen-VL generations share — a vision
tower (passed in by the architecture module), the Qwen2 decoder, and the LM head.

Attribute names (`model`, `visual`, `lm_head`) mirror the hub checkpoints' top-level
prefixes, so `state_dict()` keys are the checkpoint's tensor names.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmserve.models.attention import AttentionMetadata
from vlmserve.models.config import ModelConfig
from vlmserve.models.decoder import Decoder


class QwenVLModel(nn.Module):
    def __init__(self, config: ModelConfig, visual: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.visual = visual
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the LM head when the config asks; call again after
        parameters were replaced (e.g. `load_state_dict(assign=True)`)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def embed_multimodal(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> list[torch.Tensor]:
        merge = self.config.vision.spatial_merge_size
        merged = self.visual(pixel_values, grid_thw)
        sizes = (grid_thw.prod(-1) // merge**2).tolist()
        return list(merged.split(sizes))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        mm_embeds: torch.Tensor | None = None,
        mm_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, attn_metadata, mm_embeds, mm_mask)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states).float()
