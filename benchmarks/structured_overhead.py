"""Structured-output overhead at a Qwen-sized (~152k) vocabulary: mask fill and apply per
token, jump-ahead and budget-aware closing per token, compile cold vs cached, and end to end
through `vlmserve.offline.LLM`: output tokens/s constrained vs unconstrained at batch 1/8/32.

    .venv/bin/python benchmarks/structured_overhead.py [--tokenizer PATH] [--batches 1,8,32] [--skip-e2e]

The model is the `tiny` preset with Qwen2-VL's real vocabulary (151,643 learned BPE tokens
+ the Qwen-VL specials, 152,064 logits rows), generated once into .cache/ (~30 s). Without
--tokenizer the per-token parts use that model's tokenizer too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import tokenizers
import torch
from PIL import Image

from vlmserve.models.tiny import make_tiny_model
from vlmserve.offline import LLM
from vlmserve.safety.policy import load_policy
from vlmserve.structured import StructuredBackend, allocate_bitmask, apply_token_bitmask
from vlmserve.structured.memo import MASKS, SEARCHES
from vlmserve.structured.testing import adversarial_logits
from vlmserve.types import RequestOutput, SamplingParams, StructuredOutputsParams

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / ".cache" / "bench" / "tiny-vocab152k"
QWEN_TOKENIZER_SIZE = 151_643  # Qwen2's ordinary tokens; the specials follow

QWEN_LOGITS_WIDTH = 152_064  # Qwen2-VL's lm_head rows (tokenizer ~151.6k, padded)
CONTENT_SAFETY = load_policy().output_schema()  # the content-safety app's strict schema
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


def qwen_vocab_model() -> Path:
    """The tiny preset with Qwen2-VL's vocabulary, built once (aside, then renamed into place,
    so an interrupted build never leaves half a model)."""
    if (MODEL_DIR / "model.safetensors").is_file():
        return MODEL_DIR
    MODEL_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=MODEL_DIR.parent) as tmp:
        built = make_tiny_model(
            Path(tmp) / "model",
            preset="tiny",
            tokenizer_size=QWEN_TOKENIZER_SIZE,
            vocab_size=QWEN_LOGITS_WIDTH,
        )
        shutil.rmtree(MODEL_DIR, ignore_errors=True)
        built.rename(MODEL_DIR)
    return MODEL_DIR


def _prompts(count: int) -> list[Any]:
    """Content-safety prompts, one 448x448 image each (8 distinct images, distinct text)."""
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)) for _ in range(8)
    ]
    text = (
        "<|im_start|>system\nYou are a content-safety classifier. Answer with JSON: the "
        "best class, an explanation, the text in the image and its language.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Listing {i}: classify "
        "this image.<|im_end|>\n<|im_start|>assistant\n"
    )
    return [
        {"prompt": text.format(i=i), "multi_modal_data": {"image": [images[i % len(images)]]}}
        for i in range(count)
    ]


def _timed(
    llm: LLM, prompts: list[Any], params: list[SamplingParams], batch: int
) -> tuple[float, float, list[RequestOutput]]:
    """Run the prompts `batch` at a time (the engine's batch is then exactly `batch` until
    the first sequence of a round ends) and return (wall seconds, CPU seconds, outputs).
    CPU seconds of the whole process: with one torch thread they are the work done, and
    neighbours on a shared machine change them far less than the wall time."""
    outputs: list[RequestOutput] = []
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(prompts), batch):
        outputs += llm.generate(prompts[i : i + batch], params[i : i + batch])
    return time.perf_counter() - start, time.process_time() - cpu, outputs


def bench_e2e(
    model: Path, batches: list[int], max_tokens: int, repeats: int, threads: int | None
) -> None:
    """Constrained vs unconstrained decode with the same prompts and the same output
    lengths: each unconstrained request gets max_tokens = its constrained twin's length and
    ignore_eos, so both modes emit exactly the same number of tokens and the ratio of times
    is the ratio of throughputs. Prefix and vision caches are warmed first for every prompt,
    so neither mode pays for prefill the other does not."""
    llm = LLM(str(model), max_num_seqs=max(batches), cpu_threads=threads)
    strict = StructuredOutputsParams(json=CONTENT_SAFETY, strict=True)
    constrained = SamplingParams(temperature=0.0, max_tokens=max_tokens, structured_outputs=strict)
    count = max(32, max(batches))
    prompts = _prompts(count)
    start = time.perf_counter()
    llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=1))
    print(
        f"e2e: model {model.name}, {count} prompts warmed in {time.perf_counter() - start:.1f} s, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    llm.generate(prompts[:1], constrained)  # first compile, outside the timings
    print(
        f"{'batch':>5} {'tokens':>6} {'forced':>7} {'valid':>6} {'constrained tok/s':>18} "
        f"{'unconstrained tok/s':>20} {'ratio':>6} {'CPU-time ratio':>15} "
        f"{'paired ratios: median (quartiles; min-max), pairs >= 1':>56}"
    )
    for batch in batches:
        requests = prompts[: min(count, max(8, 4 * batch))]  # a few rounds, at most `count`
        best_c = best_u = cpu_c = cpu_u = float("inf")
        # Each alternation's own ratio too: on a shared machine the best of each mode can
        # come from different minutes; the spread of the pairs shows how far to trust it.
        pairs = []
        for _ in range(repeats):  # alternated, best of each: load from neighbours hits both
            # Each run starts with the memos (closes, masks) empty: the runs repeat the same
            # requests, and a memo the previous run filled would flatter every later run.
            SEARCHES.clear()
            MASKS.clear()
            seconds, cpu, outs = _timed(llm, requests, [constrained] * len(requests), batch)
            best_c, cpu_c = min(best_c, seconds), min(cpu_c, cpu)
            constrained_seconds = seconds
            lengths = [len(o.outputs[0].token_ids) for o in outs]
            free = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in lengths]
            seconds, cpu, free_outs = _timed(llm, requests, free, batch)
            best_u, cpu_u = min(best_u, seconds), min(cpu_u, cpu)
            pairs.append(seconds / constrained_seconds)
            assert [len(o.outputs[0].token_ids) for o in free_outs] == lengths
        tokens = sum(lengths)
        forced = sum(o.outputs[0].num_forced_tokens for o in outs)
        valid = sum(_valid(o.outputs[0].text) for o in outs)
        print(
            f"{batch:>5} {tokens:>6} {forced / tokens:>7.0%} {valid:>3}/{len(outs):<2} "
            f"{tokens / best_c:>18.0f} {tokens / best_u:>20.0f} {best_u / best_c:>5.2f}x "
            f"{cpu_u / cpu_c:>14.2f}x {statistics.median(pairs):>15.2f}x "
            f"({_quartiles(pairs)}; {min(pairs):.2f}-{max(pairs):.2f}), "
            f"{sum(p >= 1 for p in pairs)}/{len(pairs)}   (load {os.getloadavg()[0]:.2f})"
        )


def _quartiles(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return f"{low:.2f}-{high:.2f}"


def _valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), CONTENT_SAFETY)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", help="a tokenizer.json for the per-token parts")
    parser.add_argument("--batches", default="1,8,32", help="end-to-end batch sizes")
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs per mode")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-per-token", action="store_true", help="end to end only")
    parser.add_argument("--threads", type=int, help="torch threads (default: the engine's)")
    args = parser.parse_args()
    start = time.perf_counter()
    model = qwen_vocab_model()
    print(f"model {model}: ready in {time.perf_counter() - start:.1f} s")
    tokenizer = tokenizers.Tokenizer.from_file(args.tokenizer or str(model / "tokenizer.json"))
    print(f"tokenizer: {tokenizer.get_vocab_size()} tokens, logits width {QWEN_LOGITS_WIDTH}")

    if not args.skip_per_token:
        bench_per_token(tokenizer)
    if not args.skip_e2e:
        batches = [int(b) for b in args.batches.split(",")]
        bench_e2e(model, batches, args.max_tokens, args.repeats, args.threads)


def bench_per_token(tokenizer: tokenizers.Tokenizer) -> None:
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
