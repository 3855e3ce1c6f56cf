"""Opt-in int8 quantization of the decoder's linear layers on CPU (`--quantization int8`).

A decode step on CPU is bound by memory: at batch 1-32 every step streams all the weights
once, and at bf16 the `small` model's 146 MB of decoder weights are most of its step
(docs/benchmarks.md). Stored as int8 they are half the bytes, and oneDNN multiplies them on
the CPU's int8 units (AMX or AVX-512 VNNI).

The scheme is W8A8 with dynamic per-token activation scales (vLLM's "int8 dynamic
per-token" on CPU):
- weights: symmetric int8 per output channel, scale = max |row| / 127, quantized once at load;
- activations: symmetric int8 per token (row), scale = max |row| / 127, at every call;
- the int32 dot products times the two scales give the output in float32; bias added after.

A row's scale comes from that row alone and integer sums are exact, so a token's output does
not depend on the other rows of the batch or on padding (as with bf16, tests check it). It
does change outputs relative to bf16 (~1 % relative error per layer on random weights), which
is why it is opt-in; the vision tower, the embeddings and the LM head stay in the model's
dtype, so images are read and logits computed as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.config import QUANTIZATIONS
from vlmserve.models import native
from vlmserve.models.buckets import bucket
from vlmserve.models.decoder import DecoderLayer

INT8_MAX = 127.0
# A row of zeros has scale 0: any positive floor keeps the division finite, and its
# quantized values are 0 whatever the floor.
_MIN_SCALE = 1e-12


def check_quantization(quantization: str, device: torch.device) -> None:
    """Refuse a quantization this build cannot run, before any weight is touched."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}"
        )
    if quantization == "none":
        return
    if device.type != "cpu":
        raise ValueError(
            f"quantization={quantization!r} runs on CPU only (oneDNN int8 GEMMs); "
            f"this model is on {device}"
        )
    if not int8_available():
        raise ValueError(
            f"quantization={quantization!r} needs int8 GEMMs with exact int32 sums (torch's "
            "oneDNN qlinear on a CPU with AVX-512 VNNI, AVX-VNNI or AMX); this torch build "
            "or CPU does not give them"
        )


@functools.cache
def int8_available() -> bool:
    """Whether torch's oneDNN int8 linear gives exact int32 sums here. Without VNNI (AVX2
    only, e.g. AMD Zen 3) oneDNN multiplies through 16-bit pairs that saturate: a random
    layer was off by up to 25,000 in its sums (measured), so it is probed, not assumed."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_prepack")):
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (4, 64), generator=generator, dtype=torch.int8)
    w = torch.randint(-127, 128, (8, 64), generator=generator, dtype=torch.int8)
    try:
        sums = int8_sums(
            x, torch.ops.onednn.qlinear_prepack(w, None), torch.ones(8), torch.zeros(8).long()
        )
    except RuntimeError:
        return False
    # Sums of 64 products of at most 127^2 are exact in float32 (< 2^24).
    return torch.equal(sums, x.float() @ w.float().T)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (int8 [M, K], float32 scales [M, 1]): symmetric, one scale per row."""
    values = x.float()  # x itself when it is float32: divided out of place below
    scales = values.abs().amax(dim=-1, keepdim=True).clamp_min(_MIN_SCALE) / INT8_MAX
    return (values / scales).round_().to(torch.int8), scales


def int8_sums(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor
) -> torch.Tensor:
    """float32 [M, N]: each int8 row of `x` [M, K] dotted with the int8 weights packed by
    `qlinear_prepack` (exact int32 sums where `int8_available()`), times the weights'
    per-output-channel `scales` [N] (`zero_points` [N]: int64 zeros, the scheme is
    symmetric)."""
    return torch.ops.onednn.qlinear_pointwise(
        x,
        1.0,  # the per-row scales are the caller's: oneDNN takes one per tensor
        0,
        packed,
        scales,
        zero_points,
        None,
        1.0,
        0,
        torch.float32,
        "none",
        [None],
        "",
    )


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (per output channel) and int8 activations (per
    token), multiplied by oneDNN with int32 accumulation; inputs and outputs stay in the
    model's dtype."""

    weight: torch.Tensor  # buffers: oneDNN's packed int8 weight, per-channel scales
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # A weight's rows are its output channels: quantized as a token's activations are.
        quantized, scales = quantize_rows(linear.weight.detach())
        scales = scales[:, 0]
        # oneDNN's blocked int8 layout, packed once (as `PackedLinear` does for bf16).
        self.register_buffer("weight", torch.ops.onednn.qlinear_prepack(quantized, None))
        self.register_buffer("weight_scale", scales)
        self.register_buffer("weight_zero_point", torch.zeros_like(scales, dtype=torch.int64))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        # The C steps by activation dtype, looked up once here rather than on every call.
        kernels = native.load()
        self._rows_c = kernels.int8_rows if kernels is not None else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        rows_c = self._rows_c.get(x.dtype)
        if rows_c is not None:
            return self._forward_native(flat, rows, rows_c).view(*x.shape[:-1], self.out_features)
        # Few distinct row counts, so oneDNN reuses its compiled kernels (models/buckets.py);
        # zero rows quantize to zeros and are cut off below.
        if (padded := bucket(rows)) != rows:
            flat = F.pad(flat, (0, 0, 0, padded - rows))
        quantized, row_scales = quantize_rows(flat)
        out = int8_sums(quantized, self.weight, self.weight_scale, self.weight_zero_point)
        out = out[:rows].mul_(row_scales[:rows])
        if self.bias is not None:
            out = out.add_(self.bias)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def _forward_native(
        self, flat: torch.Tensor, rows: int, rows_c: tuple[Callable[..., None], ...]
    ) -> torch.Tensor:
        """The same steps with the quantize and finish in C (native.py): one call each."""
        quantize, finish = rows_c
        flat = flat.contiguous()
        quantized = torch.empty(bucket(rows), self.in_features, dtype=torch.int8)
        quantized[rows:].zero_()  # the bucket's padding rows
        row_scales = torch.empty(rows, dtype=torch.float32)
        quantize(
            flat.data_ptr(), rows, self.in_features, quantized.data_ptr(), row_scales.data_ptr()
        )
        sums = int8_sums(quantized, self.weight, self.weight_scale, self.weight_zero_point)
        out = torch.empty(rows, self.out_features, dtype=flat.dtype)
        bias = self.bias.data_ptr() if self.bias is not None else None
        finish(
            sums.data_ptr(), rows, self.out_features, row_scales.data_ptr(), bias, out.data_ptr()
        )
        return out


def quantize_linears(model: nn.Module, quantization: str) -> int:
    """Replace the linear layers of every decoder layer of `model` by their quantized form
    (after `fuse_projections`, so fused q/k/v and gate/up are quantized as one GEMM each);
    returns how many were replaced. "none" replaces nothing."""
    if quantization == "none":
        return 0
    targets = [
        (parent, name, child)
        for layer in model.modules()
        if isinstance(layer, DecoderLayer)
        for parent in layer.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, linear in targets:
        setattr(parent, name, Int8Linear(linear))
    return len(targets)
