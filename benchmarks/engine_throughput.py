"""Offline throughput: vlmserve's engine vs transformers `generate`, same model, same inputs.

    .venv/bin/python benchmarks/engine_throughput.py [--model DIR] [--requests 32] [--batch 16]

Without --model it generates the `small` preset (~96 M params, random weights) once into
.cache/. Each request is one image + a short text, greedy (ignore_eos, so a random model
writes exactly its budget). The default workload is mixed, as traffic is: image sides cycle
through 168/224/280/336 px and budgets through 60..100 tokens (mean ~80). `--uniform` gives
every request --image-size and --max-tokens instead.

transformers runs padded batches of --batch in arrival order and, as `generate` does, keeps a
batch going until its longest budget is spent; vlmserve gets every request at once with
max_num_seqs=--batch. Both sides count only the tokens each request asked for. Prints req/s,
output tok/s for each and the ratio; --profile adds where vlmserve's time goes.

`--decode-step B1,B2,..` times the forward alone instead: one decode step of B sequences
with --context tokens each in the paged cache (the runner, no scheduler, no sampling), in
CPU seconds of one torch thread (steadier than the wall clock on a shared machine).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmserve.models.tiny import make_tiny_model
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams

PAD = "<|vision_start|><|image_pad|><|vision_end|>"


SIDES = (168, 224, 280, 336)


def workload(args: argparse.Namespace) -> list[tuple[Image.Image, int]]:
    """(image, max_tokens) per request."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(args.requests):
        side = args.image_size if args.uniform else SIDES[i % len(SIDES)]
        budget = args.max_tokens if args.uniform else 60 + (i * 17) % 41
        pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        out.append((Image.fromarray(pixels), budget))
    return out


def prompt_text(i: int) -> str:
    return (
        "<|im_start|>system\nYou are a content-safety classifier.<|im_end|>\n"
        f"<|im_start|>user\n{PAD}Request {i}: classify this image.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def run_vlmserve(
    model: str, work: list[tuple[Image.Image, int]], args: argparse.Namespace
) -> float:
    llm = LLM(
        model,
        max_num_seqs=args.batch,
        max_num_batched_tokens=args.batched_tokens,
        dtype=args.dtype,
        cpu_threads=args.threads,
        quantization=args.quantization,
    )
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for _, n in work]
    llm.generate(
        {"prompt": prompt_text(-1), "multi_modal_data": {"image": [work[0][0]]}}, params[0]
    )  # warm-up
    prompts: list[Any] = [
        {"prompt": prompt_text(i), "multi_modal_data": {"image": [img]}}
        for i, (img, _) in enumerate(work)
    ]
    profiler = cProfile.Profile() if args.profile else None
    start, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    outputs = llm.generate(prompts, params)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    print(f"vlmserve CPU time {time.process_time() - cpu:.1f} s (all threads of this process)")
    assert [len(o.outputs[0].token_ids) for o in outputs] == [n for _, n in work]
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return elapsed


def run_transformers(
    model: str, work: list[tuple[Image.Image, int]], args: argparse.Namespace
) -> float:
    from transformers import (
        AutoModelForImageTextToText,
        PreTrainedTokenizerFast,
        Qwen2VLImageProcessorPil,
    )

    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    hf = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).eval()
    processor = Qwen2VLImageProcessorPil.from_pretrained(model)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(model) / "tokenizer.json"))
    config = hf.config
    pad_id = config.text_config.eos_token_id if hasattr(config, "text_config") else 0

    def batch_inputs(batch: list[tuple[int, Image.Image]]) -> dict[str, torch.Tensor]:
        vision = processor([img for _, img in batch], return_tensors="pt")
        merge = processor.merge_size**2
        rows = []
        for (i, _), grid in zip(batch, vision["image_grid_thw"].tolist()):
            text = prompt_text(i).replace(
                "<|image_pad|>", "<|image_pad|>" * (np.prod(grid) // merge)
            )
            rows.append(tokenizer(text)["input_ids"])
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])  # left padding
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "mm_token_type_ids": (ids == config.image_token_id).int(),
            "pixel_values": vision["pixel_values"],
            "image_grid_thw": vision["image_grid_thw"],
        }

    indexed = [(i, img) for i, (img, _) in enumerate(work)]
    with torch.inference_mode():
        hf.generate(**batch_inputs(indexed[:1]), max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        for b in range(0, len(indexed), args.batch):
            longest = max(n for _, n in work[b : b + args.batch])
            out = hf.generate(
                **batch_inputs(indexed[b : b + args.batch]),
                max_new_tokens=longest,
                min_new_tokens=longest,
                do_sample=False,
            )
            assert out.shape[1] > longest
        return time.perf_counter() - start


def bench_decode_step(
    model: str, batches: list[int], context: int, args: argparse.Namespace
) -> None:
    from vlmserve.models.loader import load_model
    from vlmserve.runner.model_runner import ModelRunner, SeqChunk

    # CPU time of one thread by default: idle OpenMP workers spin, and their spinning counts.
    torch.set_num_threads(args.threads or 1)
    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    net, _ = load_model(model, dtype, torch.device("cpu"))
    block_size = 16
    per_seq = -(-(context + 1) // block_size)
    blocks = 1 + per_seq * max(batches)
    runner = ModelRunner(net, torch.device("cpu"), dtype, blocks, block_size, args.quantization)
    for cache in runner.kv_caches:
        cache.normal_()
    print(
        f"decode step, {context} tokens of context each, {args.dtype}, "
        f"quantization {args.quantization}, one forward:"
    )
    for batch in batches:
        chunks = [
            SeqChunk(
                token_ids=[17 + i],
                positions=torch.full((3, 1), context),
                start=context,
                block_table=list(range(1 + i * per_seq, 1 + (i + 1) * per_seq)),
                needs_logits=True,
            )
            for i in range(batch)
        ]
        runner.execute(chunks)  # warm-up
        times = []
        for _ in range(args.steps):
            start = time.process_time()
            runner.execute(chunks)
            times.append(time.process_time() - start)
        best, median = min(times), sorted(times)[len(times) // 2]
        print(f"  batch {batch:>3}: {best * 1e3:7.2f} ms best, {median * 1e3:7.2f} ms median CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model folder (default: generated small preset)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batched-tokens", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--uniform", action="store_true", help="same image size and budget")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="both sides"
    )
    parser.add_argument(
        "--quantization",
        choices=["none", "int8"],
        default="none",
        help="vlmserve's side only (transformers runs the checkpoint's dtype)",
    )
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--decode-step", help="batch sizes: time one decode forward instead")
    parser.add_argument("--context", type=int, default=320, help="with --decode-step")
    parser.add_argument("--steps", type=int, default=20, help="with --decode-step")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads on both sides (default: the engine's choice, one for --decode-step); "
        "on a loaded machine fewer threads than cores avoid OpenMP workers waiting on each other",
    )
    args = parser.parse_args()
    model = args.model
    if model is None:
        folder = Path(".cache/bench-small-qwen2_vl")
        if not (folder / "model.safetensors").exists():
            make_tiny_model(folder, arch="qwen2_vl", preset="small")
        model = str(folder)
    torch.manual_seed(0)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1 (got {args.threads})")
        torch.set_num_threads(args.threads)  # transformers' side; the engine gets cpu_threads
    if args.decode_step:
        batches = [int(b) for b in args.decode_step.split(",")]
        bench_decode_step(model, batches, args.context, args)
        return
    work = workload(args)
    tokens = sum(n for _, n in work)
    shape = (
        f"uniform {args.image_size}px / {args.max_tokens} tokens"
        if args.uniform
        else "mixed 168-336px / 60-100 tokens"
    )
    print(
        f"model={model} requests={args.requests} ({shape}) batch={args.batch} "
        f"dtype={args.dtype} threads={torch.get_num_threads()}"
    )
    ours = run_vlmserve(model, work, args)
    print(
        f"vlmserve      {args.requests / ours:7.2f} req/s  {tokens / ours:8.1f} tok/s  ({ours:.1f} s)"
    )
    if args.skip_transformers:
        return
    ref = run_transformers(model, work, args)
    print(
        f"transformers  {args.requests / ref:7.2f} req/s  {tokens / ref:8.1f} tok/s  ({ref:.1f} s)"
    )
    print(f"ratio vlmserve/transformers: {ref / ours:.2f}x")


if __name__ == "__main__":
    main()
