"""Sampler semantics on hand-made logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlmserve.runner.sampler import SamplingRow, sample
from vlmserve.structured import apply_token_bitmask
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


class FixedMasks:
    """Grammar masks from a bitmask; `check` False makes every pick go through the mask;
    `forbids` True lets greedy picks walk past forbidden tokens."""

    def __init__(
        self, bitmask: torch.Tensor, rows: list[int], check: bool = True, forbids: bool = False
    ) -> None:
        self.bitmask, self._rows, self.check, self.forbids = bitmask, rows, check, forbids
        self.filled: list[int] = []

    @property
    def rows(self) -> list[int]:
        return self._rows

    def surely_allows(self, row: int, token_id: int) -> bool:
        return self.check and bool((int(self.bitmask[row, token_id // 32]) >> (token_id % 32)) & 1)

    def worth_walking(self, row: int) -> bool:
        return self.check

    def surely_forbids(self, row: int, token_id: int) -> bool:
        return self.forbids and not self.surely_allows(row, token_id)

    def fill(self, rows: list[int]) -> torch.Tensor:
        self.filled += rows
        return self.bitmask[rows]


def test_blocked_tokens_and_grammar_mask_remove_candidates() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    bitmask = torch.tensor([[0b1110]], dtype=torch.int32)  # tokens 1, 2, 3 allowed
    params = SamplingParams(temperature=0.0, logprobs=0)
    out = sample(logits, [row(params, blocked=[1])], FixedMasks(bitmask, [0]))
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
    assert sample(logits, [row(pushed)], FixedMasks(bitmask, [0])).token_ids == [2]
    # ... and a -100 bias on the only token the grammar allows still leaves it the choice.
    only = torch.tensor([[0b0010]], dtype=torch.int32)
    against = SamplingParams(temperature=1.0, logit_bias={1: -100.0})
    assert sample(logits, [row(against, gen=0)], FixedMasks(only, [0])).token_ids == [1]


def _random_masks(batch: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    words = torch.randint(-(2**31), 2**31 - 1, (batch, (vocab + 31) // 32), generator=generator)
    sparse = torch.randint(0, 2**31 - 1, words.shape, generator=generator)
    # Half the rows allow about a quarter of the tokens, so that raw picks often fail.
    words[::2] &= sparse[::2]
    return words.to(torch.int32)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=50, top_p=0.9),
        SamplingParams(temperature=0.0, repetition_penalty=1.5, min_tokens=3),
    ],
    ids=["greedy", "temperature", "top_k_top_p", "penalties"],
)
def test_checking_the_unmasked_pick_gives_the_masked_pick(params: SamplingParams) -> None:
    """Picking first and masking only the rows whose pick fails gives the same tokens as
    masking every constrained row first (and seeded draws stay in step)."""
    vocab, batch = 300, 8
    total_filled = 0
    for seed in range(6):
        logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3
        bitmask = _random_masks(batch, vocab, seed)
        constrained = [0, 1, 2, 4, 5, 7]
        picks = []
        for check in (True, False):
            rows = [
                row(params, output=[5, 6], gen=100 * seed + i, blocked=[7] if i % 3 else [])
                for i in range(batch)
            ]
            masks = FixedMasks(bitmask, constrained, check, forbids=check)
            tokens = sample(logits, rows, masks).token_ids
            # The generators must be where the masked-first run leaves them, too.
            after = [int(torch.randint(0, 10**9, (1,), generator=r.generator)) for r in rows]
            picks.append((tokens, after, masks.filled))
        (fast, fast_after, filled), (slow, slow_after, _) = picks
        assert fast == slow and fast_after == slow_after
        for i in constrained:
            assert (int(bitmask[i, fast[i] // 32]) >> (fast[i] % 32)) & 1
        total_filled += len(filled)
    if params.greedy or params.top_k == 0:
        # Both ways were taken: picks that stood, and picks made again under the mask.
        assert 0 < total_filled < 6 * len(constrained)


def test_masks_are_filled_only_for_rows_whose_pick_fails() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [0.0, 5.0, 1.0, 2.0]])
    bitmask = torch.tensor([[0b0010], [0b1100]], dtype=torch.int32)
    masks = FixedMasks(bitmask, [0, 1])
    greedy = SamplingParams(temperature=0.0)
    assert sample(logits, [row(greedy), row(greedy)], masks).token_ids == [1, 3]
    assert masks.filled == [1]


def test_a_greedy_walk_past_forbidden_tokens_gives_the_masked_pick_without_a_mask() -> None:
    # Token 0 wins but is forbidden; 1 and 2 tie below it: the masked argmax takes the first.
    with torch.inference_mode():  # as the runner's logits are
        logits = torch.tensor([[5.0, 4.0, 4.0, 1.0], [5.0, 4.0, 4.0, 1.0]])
    bitmask = torch.tensor([[0b0110], [0b0100]], dtype=torch.int32)
    masks = FixedMasks(bitmask, [0, 1], forbids=True)
    greedy = SamplingParams(temperature=0.0)
    assert sample(logits, [row(greedy), row(greedy)], masks).token_ids == [1, 2]
    assert masks.filled == []
    # A token the walk cannot tell about sends the row to its mask (same pick).
    unsure = FixedMasks(bitmask, [0, 1], forbids=False)
    assert sample(logits, [row(greedy), row(greedy)], unsure).token_ids == [1, 2]
    assert unsure.filled == [0, 1]
    assert torch.equal(logits, torch.tensor([[5.0, 4.0, 4.0, 1.0]] * 2))  # left as it was


def test_temperature_sampling_under_a_mask_follows_the_masked_distribution() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.2, 0.1]]))
    bitmask = torch.tensor([[0b1110]], dtype=torch.int32)  # renormalised: 0.4, 0.4, 0.2
    gen = torch.Generator().manual_seed(0)
    counts = [0, 0, 0, 0]
    for _ in range(3000):
        rows = [SamplingRow(SamplingParams(), [0], [], gen, [])]
        counts[sample(logits, rows, FixedMasks(bitmask, [0])).token_ids[0]] += 1
    assert counts[0] == 0
    assert abs(counts[1] / 3000 - 0.4) < 0.04 and abs(counts[3] / 3000 - 0.2) < 0.03


def test_a_pick_with_nothing_allowed_leaves_the_generator_untouched() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    bitmask = torch.tensor([[0b100]], dtype=torch.int32)
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    # min_tokens blocks the only allowed token: no distribution is left, argmax stands in.
    rows = [SamplingRow(SamplingParams(), [0], [], gen, [2])]
    sample(logits, rows, FixedMasks(bitmask, [0]))
    assert torch.equal(gen.get_state(), before)


def test_greedy_masked_picks_equal_masking_the_whole_row() -> None:
    """Sparse masks (picked among their allowed tokens) and dense ones give the argmax of
    the masked row, ties (first maximum), -inf, NaN and +inf logits included."""
    gen = torch.Generator().manual_seed(0)
    vocab = 4096
    logits = torch.randint(-3, 4, (12, vocab), generator=gen).float()  # many ties
    logits[1, :] = float("-inf")  # nothing allowed beats -inf: the masked argmax is 0
    logits[2, 77] = float("nan")
    logits[3, 5] = float("inf")
    logits[4, ::2] = float("-inf")
    bits = torch.rand(12, vocab, generator=gen) < 0.002  # sparse masks ...
    bits[8:] = torch.rand(4, vocab, generator=gen) < 0.5  # ... and dense ones
    bits[5, :] = False
    bits[5, 4095] = True  # one token, in the last word
    logits[6, bits[6]] = float("-inf")  # every allowed token at -inf: token 0 again
    bitmask = torch.from_numpy(np.packbits(bits.numpy(), axis=1, bitorder="little"))
    bitmask = bitmask.view(torch.int32).contiguous()
    greedy = SamplingParams(temperature=0.0)
    rows = [row(greedy) for _ in range(12)]
    picks = sample(logits, rows, FixedMasks(bitmask, list(range(12)), check=False)).token_ids
    masked = logits.clone()
    apply_token_bitmask(masked, bitmask)
    assert picks == masked.max(dim=-1).indices.tolist()
