"""The scoring pass's `top_logprobs`: besides each scored token's own logprob and rank, the
most likely tokens at its position, ranked (vLLM's prompt logprobs; /v1/completions' echo)."""

from __future__ import annotations

from pathlib import Path

from vlmserve.config import EngineConfig
from vlmserve.engine.engine import build_engine
from vlmserve.types import RequestOutput


def test_top_logprobs_rank_the_likeliest_tokens(tiny_qwen2_vl: Path) -> None:
    engine = build_engine(EngineConfig(str(tiny_qwen2_vl), dtype="float32", max_model_len=256))
    try:
        continuation = [7, 8, 9, 10]
        outputs: dict[int, RequestOutput] = {}
        for top in (0, 3):
            engine.add_scoring_request(
                f"top-{top}", {"prompt_token_ids": [5, 6]}, [continuation], top
            )
            for _ in range(100):
                done = [o for o in engine.step() if o.finished]
                if done:
                    outputs[top] = done[0]
                    break
        (plain,) = outputs[0].outputs
        (ranked,) = outputs[3].outputs
        assert plain.logprobs is not None and ranked.logprobs is not None
        for token, alone, entry in zip(continuation, plain.logprobs, ranked.logprobs, strict=True):
            assert list(alone) == [token]  # without top_logprobs: the token alone
            own = entry[token]
            assert abs(own.logprob - alone[token].logprob) < 1e-6
            others = sorted(
                (lp for t, lp in entry.items() if t != token), key=lambda lp: lp.rank or 0
            )
            if own.rank is not None and own.rank <= 3:
                assert len(others) == 2
            else:
                assert [lp.rank for lp in others] == [1, 2, 3]
            values = [lp.logprob for lp in sorted(entry.values(), key=lambda lp: lp.rank or 0)]
            assert values == sorted(values, reverse=True)
        assert not engine.requests and not engine.scheduler.running
    finally:
        engine.close()
