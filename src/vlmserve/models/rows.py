"""Float32 linear layers on CPU whose row count is padded to a multiple of 4, so that a
token's output does not depend on how many tokens share its step.

torch's float32 GEMM (MKL) picks its kernel by the row count. On an AVX2 CPU (AMD EPYC,
measured) one to three rows take other kernels than four or more, with other sums: a
request decoded alone got other bits than the same request next to three others, and
outputs changed with batching (the engine promises they do not). Any multiple of four rows
gave every row the same bits (checked up to 1,100 rows, with 1 and 2 threads). The padding
costs a copy of the input and up to three rows of work: a one-row step pays for four (a
768 x 2304 layer 0.80 -> 1.56 ms there), so layers are probed first and only those whose
rows vary are padded; where the GEMM is invariant (AVX-512 CPUs) nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.models.layers import cpu_linears

ROW_MULTIPLE = 4
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
    """Replace the float32 CPU `nn.Linear`s of `model` whose rows vary by
    `RowAlignedLinear`s; returns how many were replaced."""
    targets = cpu_linears(model, torch.float32, rows_vary)
    for parent, name, linear in targets:
        setattr(parent, name, RowAlignedLinear(linear))
    return len(targets)
