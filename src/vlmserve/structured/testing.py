"""Test assets for structured output: a Qwen-like byte-level BPE trained on local text, a
random "model" that attacks the grammar, the reference decode loop that shows how the
engine must drive a `RequestGrammar`, and output validation (used by tests and benchmarks)."""

from __future__ import annotations

import glob
import hashlib
import re
import sysconfig
from collections.abc import Callable
from typing import Any

import jsonschema
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
    """Python standard-library sources: always present, plenty of text to train on (the few
    test files that are not UTF-8 are skipped: the trainer rejects them)."""
    sources: list[str] = []
    for path in sorted(glob.glob(f"{sysconfig.get_paths()['stdlib']}/**/*.py", recursive=True)):
        if len(sources) == limit:
            break
        try:
            with open(path, encoding="utf-8") as file:
                file.read()
        except (UnicodeDecodeError, OSError):
            continue
        sources.append(path)
    return sources


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


_DATE = r"(\d{4})-(\d{2})-(\d{2})"
_TIME = r"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([zZ]|[+-]([01]\d|2[0-3]):[0-5]\d)"
_FORMATS = jsonschema.FormatChecker()


def _valid_date(text: str) -> bool:
    match = re.fullmatch(_DATE, text)
    if not match:
        return False
    year, month, day = (int(g) for g in match.groups())
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    return 1 <= month <= 12 and 1 <= day <= days[month - 1]


@_FORMATS.checks("date")
def _check_date(value: object) -> bool:
    return not isinstance(value, str) or _valid_date(value)


@_FORMATS.checks("time")
def _check_time(value: object) -> bool:
    return not isinstance(value, str) or re.fullmatch(_TIME, value) is not None


@_FORMATS.checks("date-time")
def _check_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    date, sep, time = value.partition("T") if "T" in value else value.partition("t")
    return bool(sep) and _valid_date(date) and re.fullmatch(_TIME, time) is not None


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """JSON Schema validation (the schema's own draft) with formats checked, RFC 3339 dates
    and times by regex as the RFC defines them (no optional packages needed)."""
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator(schema, format_checker=_FORMATS).validate(instance)
