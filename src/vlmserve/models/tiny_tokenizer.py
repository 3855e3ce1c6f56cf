"""The tokenizer of generated test checkpoints: a small byte-level BPE trained on this
Python's standard-library sources, with Qwen2's normalizer and pre-tokenizer, the Qwen-VL
special tokens appended, and a Qwen2-VL-style chat template.

Training is deterministic for a given Python installation (sorted file list, fixed byte
budget); another Python version has other sources and so another vocabulary.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's split rule (letters, single digits, punctuation runs, newlines, spaces); with it
# transformers' Qwen2Tokenizer rebuilds exactly this tokenizer from tokenizer.json.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Same output as Qwen2-VL-Instruct's template: default system turn, string or list
# content, one vision block per image/video part, optional "Picture N:" labels.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_BYTES = 4_000_000  # about a second of training
# Text per learned token for large vocabularies: 152k Qwen2-style tokens took ~46 MB of
# sources (fewer bytes and the trainer runs out of merges); ~20 s on 2 cores.
_BYTES_PER_TOKEN = 400


def corpus_files(budget: int = _CORPUS_BYTES) -> list[Path]:
    """Top-level stdlib modules in name order, then (for large budgets only) the rest of the
    installation's sources in path order, until `budget` bytes."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chosen, total = [], 0

    def take(paths: Iterable[Path]) -> None:
        nonlocal total
        for path in paths:
            if total >= budget:
                return
            chosen.append(path)
            total += path.stat().st_size

    take(sorted(stdlib.glob("*.py")))
    if total < budget:  # the recursive walk only when needed: it costs a few 100 ms
        take(sorted(p for p in stdlib.rglob("*.py") if p.parent != stdlib))
    if not chosen:
        raise RuntimeError(f"no Python sources found under {stdlib} to train a tokenizer on")
    return chosen


def train_tokenizer(vocab_size: int = 5000) -> Tokenizer:
    """A BPE of `vocab_size` learned tokens; the special tokens come right after them (with
    Qwen2's 151,643 they get Qwen2's ids). A corpus too small for `vocab_size` would end
    with fewer tokens: the corpus grows with it."""
    tokenizer = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [
        p.read_text(encoding="utf-8", errors="replace")
        for p in corpus_files(max(_CORPUS_BYTES, vocab_size * _BYTES_PER_TOKEN))
    ]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    return tokenizer
