"""Building blocks shared by the decoder and the vision towers: RMSNorm, the gated MLP,
activations and rotary embeddings (1-D inverse frequencies, M-RoPE, 2-D vision RoPE).

Numerics follow transformers' Qwen-VL code where it matters for parity: norms compute in
float32 and cast back before the weight; decoder cos/sin are cast to the activation dtype;
vision RoPE is applied in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.models import native
from vlmserve.models.buckets import bucket


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            # float32 on the CPU: one native call where torch makes several (norm.c).
            out = native.rms_norm(x, self.weight, self.eps)
            if out is not None:
                return out
        # torch's fused kernel on the float32 input: the same bits as writing out
        # x * rsqrt(mean(x^2) + eps), in one op instead of four (measured).
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): the decoder MLP (no bias) and Qwen2.5-VL's vision MLP
    (with bias)."""

    def __init__(self, dim: int, hidden: int, act: str, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.act = activation(act)
        # Set by `fuse`: gate and up as one GEMM (then gate_proj and up_proj are gone).
        self.gate_up_proj: nn.Module | None = None

    def fuse(self) -> bool:
        """Compute gate and up in one GEMM from now on, where that gives the same bits."""
        fused = concat_linears([self.gate_proj, self.up_proj])
        if fused is None:
            return False
        self.gate_up_proj = fused
        del self.gate_proj, self.up_proj
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


# Batch sizes a fused layer is checked on: single rows, odd sizes and full blocks can each
# take their own GEMM kernel.
_FUSION_PROBE_ROWS = (1, 7, 32)


def concat_linears(linears: Sequence[nn.Linear]) -> nn.Linear | None:
    """One linear layer whose output is `linears`' outputs side by side: one GEMM (and one
    dispatch) instead of several, 1.1-3x faster on the decoder's projections on CPU
    (measured, bf16). None where the layers do not share an input size, dtype and device,
    or where the fused GEMM does not give exactly the separate outputs on random inputs
    (so outputs never change with fusion)."""
    first = linears[0]
    has_bias = first.bias is not None
    if any(
        layer.in_features != first.in_features
        or (layer.bias is not None) != has_bias
        or layer.weight.dtype != first.weight.dtype
        or layer.weight.device != first.weight.device
        for layer in linears
    ):
        return None
    weight = first.weight
    with torch.device("meta"):
        fused = nn.Linear(first.in_features, sum(layer.out_features for layer in linears), has_bias)
    fused.weight = nn.Parameter(torch.cat([layer.weight.detach() for layer in linears]), False)
    if has_bias:
        biases = [layer.bias.detach() for layer in linears if layer.bias is not None]
        fused.bias = nn.Parameter(torch.cat(biases), requires_grad=False)
    generator = torch.Generator(device=weight.device).manual_seed(0)
    with torch.inference_mode():
        for rows in _FUSION_PROBE_ROWS:
            probe = torch.randn(
                rows, first.in_features, generator=generator, device=weight.device
            ).to(weight.dtype)
            separate = torch.cat([layer(probe) for layer in linears], dim=-1)
            if not torch.equal(fused(probe), separate):
                return None
    return fused


@functools.lru_cache(maxsize=16)
def inverse_frequencies(dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """[dim/2] float32 inverse frequencies of standard RoPE over `dim` rotated channels.
    Cached (read-only for callers): every decode step needs them, and recomputing them was
    four small ops a step (a few percent of a tiny model's step at batch 1)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim
    return 1.0 / (theta**exponents)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos/sin: [T, D] (broadcast over heads)."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def mrope_cos_sin(
    positions: torch.Tensor,
    head_dim: int,
    theta: float,
    section: tuple[int, int, int],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimodal RoPE: positions [3, T] (temporal, height, width) -> cos, sin [T, head_dim].

    The head_dim/2 frequencies are split into chunks of `section` sizes, and chunk i rotates
    by the position of axis i; both halves of the head use the same angles.
    """
    inv_freq = inverse_frequencies(head_dim, theta, positions.device)
    freqs = positions.float()[..., None] * inv_freq  # [3, T, head_dim/2]
    chunks = freqs.split(list(section), dim=-1)
    angles = torch.cat([chunk[axis] for axis, chunk in enumerate(chunks)], dim=-1)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def vision_cos_sin(
    hw_positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D RoPE of the vision tower: hw_positions [N, 2] -> float32 cos, sin [N, head_dim].

    Half of the head rotates by the row index and half by the column index, each with
    head_dim/4 frequencies; the pair is then repeated over both rotate_half halves.
    """
    inv_freq = inverse_frequencies(head_dim // 2, theta, hw_positions.device)
    freqs = hw_positions.float()[..., None] * inv_freq  # [N, 2, head_dim/4]
    angles = freqs.flatten(1)  # [N, head_dim/2]: row frequencies, then column ones
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


class PackedLinear(nn.Module):
    """A bf16 linear layer whose weight is stored in oneDNN's blocked layout (packed once),
    so that every call skips re-packing it: 1.2-2x faster than `F.linear` on the decoder's
    shapes on an AVX512-BF16 CPU, with bit-identical results (measured). torch's own
    mkldnn ops, which its CPU compiler uses for the same purpose."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Still the layer's `weight` parameter (same name, shape and count: what reports of
        # the model's size and state_dict keys see), only its memory is oneDNN's layout.
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.weight = nn.Parameter(packed, requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        # Few distinct row counts, so oneDNN reuses its compiled kernels (models/buckets.py).
        if (padded := bucket(rows)) != rows:
            flat = F.pad(flat, (0, 0, 0, padded - rows))
        out = torch.ops.mkldnn._linear_pointwise(flat, self.weight, self.bias, "none", [], "")
        return out[:rows].view(*x.shape[:-1], self.out_features)


def cpu_linears(
    model: nn.Module, dtype: torch.dtype, keep: Callable[[nn.Linear], bool] = lambda _: True
) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, layer) of every plain `nn.Linear` of `model` on the CPU with
    `dtype` weights that `keep` accepts: the layers a replacement may take."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
        and child.weight.dtype == dtype
        and child.weight.device.type == "cpu"
        and keep(child)
    ]


def weight_uses(model: nn.Module) -> dict[int, int]:
    """How many of `model`'s parameters use each storage (by data pointer): more than one
    for a weight tied to another (an LM head to its embedding)."""
    uses: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        uses[parameter.data_ptr()] = uses.get(parameter.data_ptr(), 0) + 1
    return uses


def prepack_linears(model: nn.Module) -> int:
    """Replace the bf16 `nn.Linear`s of `model` by `PackedLinear`s where that gives exactly
    the same outputs (checked on a random input per layer); a weight shared with another
    parameter (a tied LM head) stays as it is, packing it would store it twice. Returns how
    many were packed (0 where torch has no oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return 0
    uses = weight_uses(model)
    targets = cpu_linears(model, torch.bfloat16, lambda child: uses[child.weight.data_ptr()] == 1)
    packed = 0
    for parent, name, linear in targets:
        try:
            candidate = PackedLinear(linear)
            probe = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0))
            probe = probe.to(torch.bfloat16)
            if not torch.equal(candidate(probe), linear(probe)):
                continue
        except RuntimeError:  # this torch build's oneDNN cannot pack it: keep F.linear
            continue
        setattr(parent, name, candidate)
        packed += 1
    return packed
