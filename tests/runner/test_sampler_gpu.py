"""The sampler on CUDA picks what it picks on the CPU: greedy and seeded sampled rows, with
grammar masks applied on the device. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from tests.runner.test_sampler import FixedMasks, _random_masks, row
from vlmserve.runner.sampler import sample
from vlmserve.structured import apply_token_bitmask
from vlmserve.types import SamplingParams

pytestmark = pytest.mark.gpu

PARAMS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.8),
    SamplingParams(temperature=1.0, top_k=20, top_p=0.9, min_p=0.01),
    SamplingParams(temperature=0.0, repetition_penalty=1.3),
]


def test_cuda_picks_equal_cpu_picks() -> None:
    vocab, batch = 1000, 8
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(0)) * 3
    bitmask = _random_masks(batch, vocab, seed=0)
    picks = []
    for device in ("cpu", "cuda"):
        rows = [row(PARAMS[i % len(PARAMS)], output=[3], gen=50 + i) for i in range(batch)]
        out = sample(logits.to(device), rows, FixedMasks(bitmask, [0, 2, 3, 5, 6]))
        picks.append(out.token_ids)
    assert picks[0] == picks[1]


def test_bitmask_applies_on_the_device() -> None:
    logits = torch.randn(4, 1000)
    bitmask = _random_masks(4, 1000, seed=1)
    on_cpu, on_cuda = logits.clone(), logits.cuda()
    apply_token_bitmask(on_cpu, bitmask, rows=[1, 3])
    apply_token_bitmask(on_cuda, bitmask, rows=[1, 3])
    assert torch.equal(on_cuda.cpu(), on_cpu)
