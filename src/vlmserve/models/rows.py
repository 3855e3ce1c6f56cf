"""Float32 linear layers on CPU whose rows keep their bits whatever the row count, so that a
token's output does not depend on how many tokens share its step.

torch's float32 GEMM (MKL) picks its kernel by the row count. On an AVX2 CPU (AMD EPYC,
measured) one to three rows take other kernels than four or more, with other sums: a
request decoded alone got other bits than the same request next to three others, and
outputs changed with batching (the engine promises they do not). So each layer is probed
first; where its rows vary:
- `InvariantLinear`: our kernel (`linear_avx2.c`), which sums every output in one fixed
  order, with the weight packed once, in bf16 where that holds it exactly (a bf16
  checkpoint loaded in float32). The 84 linears of a `small` decode step on the EPYC, one
  thread, weights read from memory (benchmarks/linear_kernel.py): 42 -> 14 ms at 1 row,
  87 -> 58 ms at 32, 670 -> 628 ms at 360 (a prompt);
- `RowAlignedLinear` where that kernel is missing (no compiler, no AVX2, switched off) or
  the weight is shared (a tied LM head: packing would store it twice): the input padded
  with zero rows to a multiple of 4, which gave every row the same bits (checked up to
  1,100 rows, 1 and 2 threads), at the price of four rows' work for one.
Where the GEMM is invariant (AVX-512 CPUs) nothing changes.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.models import native
from vlmserve.models.layers import cpu_linears, weight_uses

logger = logging.getLogger(__name__)

ROW_MULTIPLE = 4
PANEL = 16  # outputs per panel of a packed weight (linear_avx2.c)
# Row counts a probe compares with a 16-row call: where sums differed (1-3 rows, and with 2
# threads 5-7 and 9-11); its weight is the layer's first outputs (reading a whole 152k LM
# head nine times would cost seconds at start-up).
_PROBE_ROWS = (1, 2, 3, 5, 6, 7, 9, 10, 11)
_PROBE_OUTPUTS = 1024


class RowAlignedLinear(nn.Module):
    """`linear` computed on its input padded with zero rows to a multiple of 4 rows."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same parameter: a tied weight stays shared
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        if rows % ROW_MULTIPLE:
            flat = F.pad(flat, (0, 0, 0, ROW_MULTIPLE - rows % ROW_MULTIPLE))
        return F.linear(flat, self.weight, self.bias)[:rows].view(*x.shape[:-1], -1)


class InvariantLinear(nn.Module):
    """`linear` computed by our kernel (`native.invariant_linear`): every output summed in
    one fixed order. Its `weight` parameter holds the packed weight, [panels, in, 16], in
    bf16 where that is exact, and its bias is padded to whole panels."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        narrow = weight.to(torch.bfloat16)
        if torch.equal(narrow.float(), weight):  # exact: same products at half the bytes
            weight = narrow
        panels = -(-self.out_features // PANEL)
        padded = weight.new_zeros(panels * PANEL, self.in_features)
        padded[: self.out_features] = weight
        packed = padded.view(panels, PANEL, self.in_features).transpose(1, 2).contiguous()
        self.weight = nn.Parameter(packed, requires_grad=False)
        self.bias: nn.Parameter | None = None
        if linear.bias is not None:
            bias = linear.bias.detach().new_zeros(panels * PANEL)
            bias[: self.out_features] = linear.bias.detach()
            self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).contiguous()
        out = native.invariant_linear(flat, self.weight, self.bias, self.out_features)
        return out.view(*x.shape[:-1], self.out_features)


def rows_vary(linear: nn.Linear) -> bool:
    """Whether a row's bits depend on how many rows share the call, for this layer here."""
    weight = linear.weight.detach()[:_PROBE_OUTPUTS]
    bias = None if linear.bias is None else linear.bias.detach()[:_PROBE_OUTPUTS]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, linear.in_features, generator=generator, dtype=weight.dtype)
    with torch.inference_mode():
        full = F.linear(x, weight, bias)
        return any(
            not torch.equal(F.linear(x[:rows], weight, bias), full[:rows]) for rows in _PROBE_ROWS
        )


def align_linear_rows(model: nn.Module) -> int:
    """Replace the float32 CPU `nn.Linear`s of `model` whose rows vary by `InvariantLinear`s
    where the kernel is there and the weight is the layer's own, else by
    `RowAlignedLinear`s; returns how many were replaced."""
    targets = cpu_linears(model, torch.float32, rows_vary)
    if not targets:
        return 0
    kernels = native.load()
    uses = weight_uses(model)
    replaced, kernel, narrow = len(targets), 0, 0
    while targets:  # popped: each float32 weight is freed once its packed copy is in place
        parent, name, linear = targets.pop()
        own = kernels is not None and kernels.has_linear and uses[linear.weight.data_ptr()] == 1
        layer = InvariantLinear(linear) if own else RowAlignedLinear(linear)
        setattr(parent, name, layer)
        kernel += own
        narrow += own and layer.weight.dtype == torch.bfloat16
        del linear
    logger.info(
        "float32 linears whose rows vary with the row count on this CPU: %d on our kernel "
        "(%d of them in bf16 panels, exact), %d padded to 4 rows",
        kernel,
        narrow,
        replaced - kernel,
    )
    return replaced
