"""Float32 linear layers on CPU whose row count is padded to a multiple of 4, so that a
token's output does not depend on how many tokens share its step.

torch's float32 GEMM (MKL) picks its kernel by the row count. On an AVX2 CPU (AMD EPYC,
measured) one to three rows take other kernels than four or more, with other sums: a
request decoded alone got other bits than the same request next to three others, and
outputs changed with batching (the engine promises they do not). Any multiple of four rows
gave every row the same bits (checked up to 1,100 rows, with 1 and 2 threads). Where the
GEMM is invariant anyway (AVX-512 CPUs) the padding changes no bit; it costs a copy of the
input and at most three rows of work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.models.layers import cpu_linears

ROW_MULTIPLE = 4


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


def align_linear_rows(model: nn.Module) -> int:
    """Replace the float32 CPU `nn.Linear`s of `model` by `RowAlignedLinear`s; returns how
    many were replaced."""
    targets = cpu_linears(model, torch.float32)
    for parent, name, linear in targets:
        setattr(parent, name, RowAlignedLinear(linear))
    return len(targets)
