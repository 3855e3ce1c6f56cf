"""The Qwen2 language decoder both Qwen-VL generations share: GQA attention with biased
q/k/v projections and M-RoPE, SwiGLU MLP, RMSNorm, attending through the paged KV cache.

Module attribute names equal the checkpoint's tensor names (`embed_tokens`,
`layers.N.self_attn.q_proj`, ...) so weights load without a renaming table.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmserve.models.attention import AttentionMetadata, paged_attention
from vlmserve.models.config import ModelConfig
from vlmserve.models.layers import (
    GatedMLP,
    RMSNorm,
    apply_rotary,
    concat_linears,
    mrope_cos_sin,
)


class DecoderAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.scale = self.head_dim**-0.5
        # Set by `fuse`: q, k and v as one GEMM (then q_proj, k_proj and v_proj are gone).
        self.qkv_proj: nn.Module | None = None

    def fuse(self) -> bool:
        """Compute q, k and v in one GEMM from now on, where that gives the same bits."""
        fused = concat_linears([self.q_proj, self.k_proj, self.v_proj])
        if fused is None:
            return False
        self.qkv_proj = fused
        del self.q_proj, self.k_proj, self.v_proj
        return True

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        tokens = x.shape[0]
        if self.qkv_proj is not None:
            heads = (self.num_heads, self.num_kv_heads, self.num_kv_heads)
            qkv = self.qkv_proj(x).view(tokens, sum(heads), self.head_dim)
            # q and k rotate together: one set of elementwise ops instead of two.
            qk = apply_rotary(qkv[:, : heads[0] + heads[1]], cos, sin)
            q, k = qk.split(heads[:2], dim=1)
            v = qkv[:, heads[0] + heads[1] :]
        else:
            q = self.q_proj(x).view(tokens, self.num_heads, self.head_dim)
            k = self.k_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
            v = self.v_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = paged_attention(q, k, v, kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(tokens, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(config)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, "silu", bias=False)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        mm_embeds: torch.Tensor | None = None,
        mm_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} KV caches, got {len(kv_caches)}")
        x = self.embed_tokens(input_ids)
        if mm_embeds is not None and mm_mask is not None:
            if int(mm_mask.sum()) != mm_embeds.shape[0]:
                raise ValueError(
                    f"{int(mm_mask.sum())} placeholder tokens but {mm_embeds.shape[0]} "
                    "multimodal embedding rows"
                )
            x = x.masked_scatter(mm_mask[:, None], mm_embeds.to(x.dtype))
        cfg = self.config
        cos, sin = mrope_cos_sin(
            positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, x.dtype
        )
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x = layer(x, cos, sin, kv_cache, meta)
        return self.norm(x)


def fuse_projections(model: nn.Module) -> int:
    """Fuse every decoder attention's q/k/v and every gated MLP's gate/up projections (the
    vision tower's included) into single GEMMs where that keeps outputs bit-identical;
    returns how many modules were fused. After loading: the checkpoint's tensor names are
    the separate ones."""
    targets = [m for m in model.modules() if isinstance(m, DecoderAttention | GatedMLP)]
    return sum(target.fuse() for target in targets)
