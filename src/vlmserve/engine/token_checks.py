"""Sampling parameters that name token ids, checked against the model's vocabulary when a
request is accepted: an id past the logits' last row would fail the whole step later."""

from __future__ import annotations

from vlmserve.engine.inputs import InputError
from vlmserve.types import SamplingParams


def check_token_ids(params: SamplingParams, vocab_size: int) -> None:
    """InputError naming the first id outside [0, vocab_size) (`logit_bias["12345"]`, the way
    an HTTP client wrote the key; `stop_token_ids[2]`)."""
    for token in params.logit_bias or {}:
        if not 0 <= token < vocab_size:
            param = f'logit_bias["{token}"]'
            raise InputError(
                f"{param}: token id {token} is not in this model's vocabulary "
                f"(ids 0 to {vocab_size - 1})",
                param,
            )
    for i, token in enumerate(params.stop_token_ids):
        if not 0 <= token < vocab_size:
            raise InputError(
                f"stop_token_ids[{i}]: token id {token} is not in this model's vocabulary "
                f"(ids 0 to {vocab_size - 1})",
                f"stop_token_ids[{i}]",
            )
