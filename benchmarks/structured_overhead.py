"""Structured-output overhead at a Qwen-sized (~152k) vocabulary: mask fill and apply per
token, jump-ahead and budget-aware closing per token, compile cold vs cached.

    python benchmarks/structured_overhead.py [--tokenizer PATH] [--save PATH]

Without --tokenizer it trains a byte-level BPE with 151k merges on the Python stdlib (the
same recipe as the tests, at Qwen2's size; a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import time

import tokenizers
import torch

from vlmserve.structured import StructuredBackend, allocate_bitmask, apply_token_bitmask
from vlmserve.structured.testing import adversarial_logits, stdlib_sources, train_byte_level_bpe
from vlmserve.types import StructuredOutputsParams

QWEN_LOGITS_WIDTH = 152_064  # Qwen2-VL's lm_head rows (tokenizer ~151.6k, padded)
CONTENT_SAFETY = {
    "type": "object",
    "properties": {
        "categories": {
            "type": "array",
            "items": {
                "enum": ["alcohol", "tobacco", "guns_weapons", "profanity", "violence", "no_issues"]
            },
        },
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "rationale": {"type": "string", "maxLength": 200},
    },
    "required": ["categories", "confidence", "rationale"],
    "additionalProperties": False,
}
TOOL_CALL = {
    "type": "object",
    "properties": {
        "name": {"const": "search"},
        "arguments": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1}},
            "required": ["query", "top_k"],
        },
    },
    "required": ["name", "arguments"],
}


def _us(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1e6:8.1f} us   p90 {sorted(samples)[int(0.9 * len(samples))] * 1e6:8.1f} us"


def _bench_apply(vocab: int) -> None:
    for batch in (1, 8):
        logits = torch.randn(batch, vocab)
        bitmask = torch.randint(-(2**31), 2**31 - 1, (batch, (vocab + 31) // 32), dtype=torch.int32)
        times = []
        apply_token_bitmask(logits, bitmask)  # first call pays for thread-pool start-up
        for _ in range(50):
            start = time.perf_counter()
            apply_token_bitmask(logits, bitmask)
            times.append(time.perf_counter() - start)
        print(
            f"apply_token_bitmask  batch {batch}: {_us(times)}  ({statistics.median(times) / batch * 1e3:.3f} ms/row)"
        )


def _bench_decode(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, schema: dict, budget: int | None
) -> None:
    """Per-step costs of the engine's loop (see vlmserve.structured.testing.decode)."""
    compiled = backend.compile(StructuredOutputsParams(json=schema))
    fill, steer, accept, forced_calls = [], [], [], []
    total_tokens = total_forced = 0
    bitmask = allocate_bitmask(1, backend.vocab_size)
    for seed in range(4):
        logits_fn = adversarial_logits(tokenizer, backend.vocab_size, seed)
        grammar = backend.new_request(compiled, budget)
        limit = budget or 120
        output: list[int] = []
        while len(output) < limit and not grammar.is_terminated():
            start = time.perf_counter()
            forced = grammar.forced_tokens()
            forced_calls.append(time.perf_counter() - start)
            if forced:
                for token in forced:
                    grammar.accept_token(token)
                output += forced
                total_forced += len(forced)
                continue
            logits = logits_fn(output).unsqueeze(0)
            start = time.perf_counter()
            grammar.fill_bitmask(bitmask[0])
            fill.append(time.perf_counter() - start)
            apply_token_bitmask(logits, bitmask)
            sampled = int(logits.argmax())
            start = time.perf_counter()
            token = grammar.steer(sampled)
            steer.append(time.perf_counter() - start)
            start = time.perf_counter()
            grammar.accept_token(token)
            accept.append(time.perf_counter() - start)
            output.append(token)
        total_tokens += len(output)
    label = f"budget {budget}" if budget else "no budget"
    print(
        f"  {label}: {total_tokens} tokens, {total_forced} forced ({total_forced / total_tokens:.0%})"
    )
    print(f"    fill_bitmask   {_us(fill)}")
    print(f"    forced_tokens  {_us(forced_calls)}")
    print(f"    steer          {_us(steer)}")
    print(f"    accept_token   {_us(accept)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", help="a saved tokenizer.json (skips training)")
    parser.add_argument("--save", help="where to save the trained tokenizer")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.tokenizer:
        tokenizer = tokenizers.Tokenizer.from_file(args.tokenizer)
    else:
        tokenizer = train_byte_level_bpe(151_000, stdlib_sources(100_000))
        if args.save:
            tokenizer.save(args.save)
    print(
        f"tokenizer: {tokenizer.get_vocab_size()} tokens ({time.perf_counter() - start:.1f} s), logits width {QWEN_LOGITS_WIDTH}"
    )
    eos = [tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")]
    start = time.perf_counter()
    backend = StructuredBackend(tokenizer, QWEN_LOGITS_WIDTH, eos)
    print(
        f"backend setup (llguidance tokenizer + token view): {time.perf_counter() - start:.2f} s, once per model"
    )

    for name, schema in (("content-safety", CONTENT_SAFETY), ("tool-call", TOOL_CALL)):
        params = StructuredOutputsParams(json=schema)
        start = time.perf_counter()
        compiled = backend.compile(params)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        backend.compile(params)
        cached = time.perf_counter() - start
        start = time.perf_counter()
        backend.new_request(compiled, 64)
        new_request = time.perf_counter() - start
        print(
            f"compile {name}: cold {cold * 1e3:.1f} ms (shortest output {compiled.min_output_tokens} tokens), cached {cached * 1e6:.0f} us, new_request {new_request * 1e6:.0f} us"
        )
    for name, schema in (("content-safety", CONTENT_SAFETY), ("tool-call", TOOL_CALL)):
        print(f"decode {name} (adversarial random logits, greedy):")
        shortest = backend.compile(StructuredOutputsParams(json=schema)).min_output_tokens
        for budget in (None, shortest + 10):
            _bench_decode(backend, tokenizer, schema, budget)
    _bench_apply(QWEN_LOGITS_WIDTH)
    print(f"compile stats: {backend.stats}")


if __name__ == "__main__":
    main()
