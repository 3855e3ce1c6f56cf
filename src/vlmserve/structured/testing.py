"""Test assets for structured output: a Qwen-like byte-level BPE trained on local text, a
random "model" that attacks the grammar, and the reference decode loop that shows how the
engine must drive a `RequestGrammar` (used by tests and benchmarks)."""

from __future__ import annotations

import glob
import hashlib
import sysconfig
from collections.abc import Callable

import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, trainers

from vlmserve.structured.bitmask import allocate_bitmask, apply_token_bitmask
from vlmserve.structured.request import RequestGrammar

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

LogitsFn = Callable[[list[int]], torch.Tensor]


def stdlib_sources(limit: int) -> list[str]:
    """Python standard-library sources: always present, plenty of text to train on."""
    return sorted(glob.glob(f"{sysconfig.get_paths()['stdlib']}/**/*.py", recursive=True))[:limit]


def train_byte_level_bpe(vocab_size: int, files: list[str]) -> tokenizers.Tokenizer:
    """A byte-level BPE like Qwen2's (all 256 bytes, GPT-2 pre-tokenizer), specials last."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train(files, trainer)
    tokenizer.add_special_tokens(QWEN_SPECIAL_TOKENS)
    return tokenizer


def adversarial_logits(
    tokenizer: tokenizers.Tokenizer, vocab_size: int, seed: int, attack: float = 8.0
) -> LogitsFn:
    """Random logits that depend only on the tokens so far (so two decodes of the same prefix
    see the same logits) and favour what breaks weak constraints: special tokens and EOS,
    control characters, whitespace, backslashes and quotes, and ids past the tokenizer."""
    size = tokenizer.get_vocab_size()
    bias = torch.zeros(vocab_size)
    for token_id in range(size):
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        if token_id >= size - len(QWEN_SPECIAL_TOKENS) or any(
            c.isspace() or ord(c) < 32 or c in '\\"' for c in text
        ):
            bias[token_id] = attack
    bias[size:] = attack

    def logits(prefix: list[int]) -> torch.Tensor:
        digest = hashlib.blake2b(repr((seed, prefix)).encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
        return torch.randn(vocab_size, generator=generator) * 4 + bias

    return logits


def decode(
    grammar: RequestGrammar,
    logits_fn: LogitsFn,
    vocab_size: int,
    max_tokens: int,
    jump_ahead: bool = True,
) -> tuple[list[int], int]:
    """Greedy constrained decoding the way the engine does it; returns (tokens, forced)."""
    bitmask = allocate_bitmask(1, vocab_size)
    output: list[int] = []
    num_forced = 0
    while len(output) < max_tokens and not grammar.is_terminated():
        forced = grammar.forced_tokens() if jump_ahead else []
        if forced:
            for token in forced:
                if not grammar.accept_token(token):
                    raise AssertionError(f"forced token {token} rejected")
            output += forced
            num_forced += len(forced)
            continue
        logits = logits_fn(output).unsqueeze(0)
        grammar.fill_bitmask(bitmask[0])
        apply_token_bitmask(logits, bitmask)
        token = grammar.steer(int(logits.argmax()))
        if not grammar.accept_token(token):
            raise AssertionError(f"sampled token {token} rejected")
        output.append(token)
    return output, num_forced
