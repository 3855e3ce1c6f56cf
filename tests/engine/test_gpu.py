"""The engine on CUDA (bf16 by default there) tracks fp32 on CUDA: the fp32 greedy token is
among bf16's top 5 with a logprob within bf16 error. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.test_parity import PROMPTS, engine_prompt
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams

pytestmark = pytest.mark.gpu


def test_cuda_bf16_engine_tracks_fp32(tiny_qwen2_vl: Path) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=4, logprobs=5, ignore_eos=True)
    prompts = [engine_prompt(i) for i in range(len(PROMPTS))]
    fp32 = LLM(str(tiny_qwen2_vl), device="cuda", dtype="float32").generate(prompts, params)
    bf16 = LLM(str(tiny_qwen2_vl), device="cuda").generate(prompts, params)
    for a, b in zip(fp32, bf16, strict=True):
        first_a, first_b = a.outputs[0], b.outputs[0]
        token = first_a.token_ids[0]
        # Random weights leave near-ties that bf16 may flip: the fp32 pick must be among
        # bf16's top 5, with a logprob within bf16 error.
        assert token in first_b.logprobs[0]
        assert abs(first_a.logprobs[0][token].logprob - first_b.logprobs[0][token].logprob) < 0.05
