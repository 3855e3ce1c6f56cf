"""Float32 linear layers whose rows keep their bits (models/rows.py), side by side in one
process: our kernel (`InvariantLinear`, linear_avx2.c, bf16 panels where exact) against
torch's GEMM padded to 4 rows (`RowAlignedLinear`, what such CPUs used before) and plain
`nn.Linear` (fastest where it does not vary, but a row's bits change with the row count).

    .venv/bin/python benchmarks/linear_kernel.py [--threads 1] [--repeats 5] [--rows 1,4,8,32,360]

The layers are the `small` preset's 12 decoder layers (q, k, v, o, gate, up, down: 84
linears, 292 MB in float32), with bf16-exact weights as a bf16 checkpoint loaded in float32
has; one pass through all of them is one step's linears, reading every weight from memory
(the set is ~9x the CPU's last-level cache), as a real step does. Times are wall ms per step
(best of --repeats).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from vlmserve.models import native
from vlmserve.models.rows import InvariantLinear, RowAlignedLinear

HIDDEN, INTERMEDIATE, KV, LAYERS = 768, 2048, 128, 12
SHAPES = [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN)]
SHAPES += [(HIDDEN, INTERMEDIATE), (HIDDEN, INTERMEDIATE), (INTERMEDIATE, HIDDEN)]


def _step_ms(layers: list[nn.Module], inputs: dict[int, torch.Tensor], repeats: int) -> float:
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first: warm-up
            start = time.perf_counter()
            for layer in layers:
                layer(inputs[layer.in_features])
            best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", default="1,4,8,32,360")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = native.load()
    if kernels is None or not kernels.has_linear:
        raise SystemExit("linear_avx2.c is not available here (no C compiler, or no AVX2/FMA)")
    torch.manual_seed(0)
    plain = [nn.Linear(i, o, bias=False) for _ in range(LAYERS) for i, o in SHAPES]
    for layer in plain:
        layer.weight.data = layer.weight.data.bfloat16().float()  # a bf16 checkpoint's values
    ways: list[tuple[str, Callable[[nn.Linear], nn.Module]]] = [
        ("ours (bf16 panels)", InvariantLinear),
        ("torch, padded to 4", RowAlignedLinear),
        ("torch, plain", lambda layer: layer),
    ]
    built = {name: [make(layer) for layer in plain] for name, make in ways}
    print(
        f"{len(plain)} float32 linears of the small preset ({sum(p.weight.nbytes for p in plain) >> 20} "
        f"MiB), {args.threads} thread(s), wall ms per step (best of {args.repeats}):"
    )
    print(f"{'rows':>5} " + " ".join(f"{name:>20}" for name, _ in ways) + "   padded/ours")
    for rows in (int(r) for r in args.rows.split(",")):
        inputs = {size: torch.randn(rows, size) for size in (HIDDEN, INTERMEDIATE)}
        times = [_step_ms(built[name], inputs, args.repeats) for name, _ in ways]
        cells = " ".join(f"{t:20.2f}" for t in times)
        print(f"{rows:>5} {cells}   {times[1] / times[0]:10.2f}x")


if __name__ == "__main__":
    main()
