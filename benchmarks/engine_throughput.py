"""Offline throughput: vlmserve's engine vs transformers `generate`, same model, same inputs.

    .venv/bin/python benchmarks/engine_throughput.py [--model DIR] [--requests 32] [--batch 16]

Without --model it generates the `small` preset (~96 M params, random weights) once into
.cache/. Each request is one image + a short text, greedy, exactly --max-tokens output tokens
(ignore_eos) so both sides do the same work. transformers runs padded batches of --batch;
vlmserve gets all requests at once with max_num_seqs=--batch. Prints req/s, output tok/s for
each and the ratio, then a profile of where vlmserve's time goes (--profile).
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


def images(count: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)
    ]


def prompt_text(i: int) -> str:
    return (
        "<|im_start|>system\nYou are a content-safety classifier.<|im_end|>\n"
        f"<|im_start|>user\n{PAD}Request {i}: classify this image.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def run_vlmserve(model: str, imgs: list[Image.Image], args: argparse.Namespace) -> float:
    llm = LLM(model, max_num_seqs=args.batch, max_num_batched_tokens=args.batched_tokens)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(
        {"prompt": prompt_text(-1), "multi_modal_data": {"image": [imgs[0]]}}, params
    )  # warm-up
    prompts: list[Any] = [
        {"prompt": prompt_text(i), "multi_modal_data": {"image": [img]}}
        for i, img in enumerate(imgs)
    ]
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    outputs = llm.generate(prompts, params)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == args.max_tokens for o in outputs)
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return elapsed


def run_transformers(model: str, imgs: list[Image.Image], args: argparse.Namespace) -> float:
    from transformers import AutoModelForImageTextToText, Qwen2VLImageProcessorPil
    from transformers import PreTrainedTokenizerFast

    hf = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32).eval()
    processor = Qwen2VLImageProcessorPil.from_pretrained(model)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(model) / "tokenizer.json"))
    config = hf.config
    pad_id = config.text_config.eos_token_id if hasattr(config, "text_config") else 0

    def batch_inputs(batch: list[tuple[int, Image.Image]]) -> dict[str, torch.Tensor]:
        vision = processor([img for _, img in batch], return_tensors="pt")
        merge = processor.merge_size**2
        rows = []
        for (i, _), grid in zip(batch, vision["image_grid_thw"].tolist()):
            text = prompt_text(i).replace("<|image_pad|>", "<|image_pad|>" * (np.prod(grid) // merge))
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

    indexed = list(enumerate(imgs))
    with torch.inference_mode():
        hf.generate(**batch_inputs(indexed[:1]), max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        for b in range(0, len(indexed), args.batch):
            out = hf.generate(
                **batch_inputs(indexed[b : b + args.batch]),
                max_new_tokens=args.max_tokens,
                min_new_tokens=args.max_tokens,
                do_sample=False,
            )
            assert out.shape[1] > args.max_tokens
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model folder (default: generated small preset)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batched-tokens", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    model = args.model
    if model is None:
        folder = Path(".cache/bench-small-qwen2_vl")
        if not (folder / "model.safetensors").exists():
            make_tiny_model(folder, arch="qwen2_vl", preset="small")
        model = str(folder)
    torch.manual_seed(0)
    imgs = images(args.requests, args.image_size)
    tokens = args.requests * args.max_tokens
    print(f"model={model} requests={args.requests} max_tokens={args.max_tokens} "
          f"batch={args.batch} image={args.image_size}px threads={torch.get_num_threads()}")
    ours = run_vlmserve(model, imgs, args)
    print(f"vlmserve      {args.requests / ours:7.2f} req/s  {tokens / ours:8.1f} tok/s  ({ours:.1f} s)")
    if args.skip_transformers:
        return
    ref = run_transformers(model, imgs, args)
    print(f"transformers  {args.requests / ref:7.2f} req/s  {tokens / ref:8.1f} tok/s  ({ref:.1f} s)")
    print(f"ratio vlmserve/transformers: {ref / ours:.2f}x")


if __name__ == "__main__":
    main()
