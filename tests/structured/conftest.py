"""Session fixtures: a Qwen-like byte-level BPE trained on the stdlib, and a backend over it
with logits wider than the tokenizer (as real checkpoints pad their vocabulary)."""

from __future__ import annotations

import pytest
import tokenizers

from vlmserve.structured import StructuredBackend
from vlmserve.structured.testing import stdlib_sources, train_byte_level_bpe

LOGITS_WIDTH_PADDING = 57


@pytest.fixture(scope="session")
def tokenizer() -> tokenizers.Tokenizer:
    return train_byte_level_bpe(4000, stdlib_sources(40))


@pytest.fixture(scope="session")
def backend(tokenizer: tokenizers.Tokenizer) -> StructuredBackend:
    eos = [tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")]
    return StructuredBackend(tokenizer, tokenizer.get_vocab_size() + LOGITS_WIDTH_PADDING, eos)
