"""Sampler semantics on hand-made logits."""

from __future__ import annotations

import math

import torch

from vlmserve.runner.sampler import SamplingRow, sample
from vlmserve.types import SamplingParams


def row(
    params: SamplingParams, output: list[int] | None = None, gen: int | None = None, **kw
) -> SamplingRow:
    generator = torch.Generator().manual_seed(gen) if gen is not None else None
    return SamplingRow(params, [0], output or [], generator, kw.get("blocked", []))


def test_greedy_picks_argmax_and_reports_raw_logprob_and_rank() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = sample(logits, [row(SamplingParams(temperature=0.0, logprobs=2))])
    assert out.token_ids == [1]
    assert math.isclose(out.logprobs[0], torch.log_softmax(logits, -1)[0, 1].item(), rel_tol=1e-6)
    assert out.ranks == [1]
    assert out.top_ids == [[1, 2]]


def test_blocked_tokens_and_grammar_mask_remove_candidates() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    bitmask = torch.tensor([[0b1110]], dtype=torch.int32)  # tokens 1, 2, 3 allowed
    params = SamplingParams(temperature=0.0, logprobs=0)
    out = sample(logits, [row(params, blocked=[1])], bitmask, [0])
    assert out.token_ids == [2]
    # The reported logprob is the model's own, before masking: token 2 ranks third.
    assert out.ranks == [3]


def test_repetition_presence_and_frequency_penalties() -> None:
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    out = sample(logits, [SamplingRow(params, [0], [], None, [])])
    assert out.token_ids == [1]  # token 0 (in the prompt) is divided by 2
    params = SamplingParams(temperature=0.0, frequency_penalty=0.1)
    assert sample(logits, [row(params, output=[0, 0])]).token_ids == [1]
    params = SamplingParams(temperature=0.0, presence_penalty=0.05)
    assert sample(logits, [row(params, output=[0])]).token_ids == [0]


def test_seeded_sampling_is_reproducible_and_independent_of_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, min_p=0.01, seed=7)
    alone = sample(logits[1:2], [row(params, gen=7)]).token_ids
    together = sample(logits, [row(params, gen=1), row(params, gen=7), row(params, gen=3)])
    assert together.token_ids[1] == alone[0]


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = torch.randn(1, 100)
    best = int(logits.argmax())
    for params in (SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(min_p=1.0)):
        picks = {sample(logits, [row(params, gen=s)]).token_ids[0] for s in range(10)}
        assert picks == {best}


def test_sampling_follows_the_distribution() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    gen = torch.Generator().manual_seed(0)
    counts = [0, 0, 0]
    for _ in range(2000):
        counts[sample(logits, [SamplingRow(SamplingParams(), [0], [], gen, [])]).token_ids[0]] += 1
    assert abs(counts[0] / 2000 - 0.7) < 0.04 and abs(counts[2] / 2000 - 0.1) < 0.03


def test_logit_bias_moves_the_choice_but_never_past_the_grammar_mask() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    greedy = SamplingParams(temperature=0.0, logprobs=0)
    banned = SamplingParams(temperature=0.0, logprobs=0, logit_bias={0: -100.0})
    assert sample(logits, [row(greedy)]).token_ids == [0]
    out = sample(logits, [row(banned)])
    assert out.token_ids == [1]
    # Reported logprobs stay the model's own: the bias is a sampling choice.
    assert out.ranks == [2]
    forced = SamplingParams(temperature=1.0, logit_bias={3: 100.0})
    assert {sample(logits, [row(forced, gen=g)]).token_ids[0] for g in range(20)} == {3}
    # The mask applies after the bias: +100 on a masked token cannot let it through.
    bitmask = torch.tensor([[0b0110]], dtype=torch.int32)  # tokens 1 and 2 allowed
    pushed = SamplingParams(temperature=0.0, logit_bias={3: 100.0, 0: 100.0, 2: 5.0})
    assert sample(logits, [row(pushed)], bitmask, [0]).token_ids == [2]
    # ... and a -100 bias on the only token the grammar allows still leaves it the choice.
    only = torch.tensor([[0b0010]], dtype=torch.int32)
    against = SamplingParams(temperature=1.0, logit_bias={1: -100.0})
    assert sample(logits, [row(against, gen=0)], only, [0]).token_ids == [1]
