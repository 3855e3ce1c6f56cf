"""Time to first token saved by naming a cached image by UUID alone.

    .venv/bin/python benchmarks/uuid_cache.py [--model DIR] [--image-size 448] [--repeats 5]

For each repeat a fresh random image goes in once with its data and a UUID (cold: decode,
preprocess, vision tower, decoder prefill), then again by UUID only (warm). Both generate
one token, greedy; the warm output must equal the cold one. Timed per request:

- ttft: wall clock of `LLM.generate` (input processing included) for one token;
- prefill: the engine's first_scheduled -> first_token time (vision tower + decoder).

Run twice: with the prefix cache off (the vision cache alone) and on (the default, where the
decoder's KV for the prompt is reused too). Prints medians. Without --model it generates the
`small` preset (~96 M params, random weights) once into .cache/.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmserve.models.tiny import make_tiny_model
from vlmserve.offline import LLM
from vlmserve.types import RequestOutput, SamplingParams

PROMPT = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the picture?"
    "<|im_end|>\n<|im_start|>assistant\n"
)
ONE_TOKEN = SamplingParams(temperature=0.0, max_tokens=1)


def timed(llm: LLM, image: Image.Image | None, uuid: str) -> tuple[float, float, RequestOutput]:
    prompt = {
        "prompt": PROMPT,
        "multi_modal_data": {"image": [image]},
        "multi_modal_uuids": {"image": [uuid]},
    }
    start = time.perf_counter()
    out = llm.generate(prompt, ONE_TOKEN)[0]
    ttft = time.perf_counter() - start
    m = out.metrics
    assert m.first_token_time is not None and m.first_scheduled_time is not None
    return ttft, m.first_token_time - m.first_scheduled_time, out


def run(model: str, size: int, repeats: int, prefix_caching: bool) -> None:
    llm = LLM(model, enable_prefix_caching=prefix_caching)
    rng = np.random.default_rng(0)
    warmup = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    timed(llm, warmup, "warm-up")
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    for i in range(repeats):
        image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        *first, out_cold = timed(llm, image, f"img-{i}")
        *second, out_warm = timed(llm, None, f"img-{i}")
        assert out_warm.outputs[0].token_ids == out_cold.outputs[0].token_ids
        cold.append((first[0], first[1]))
        warm.append((second[0], second[1]))
    tokens = len(out_cold.prompt_token_ids)
    label = "on " if prefix_caching else "off"
    for name, column in (("ttft", 0), ("prefill", 1)):
        c = statistics.median(t[column] for t in cold) * 1000
        w = statistics.median(t[column] for t in warm) * 1000
        print(
            f"prefix cache {label}  {name:7s} cold {c:8.1f} ms  uuid-only {w:8.1f} ms  "
            f"saved {c - w:8.1f} ms ({(c - w) / c:5.1%})  [{tokens} prompt tokens]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model folder (default: generated small preset)")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = args.model
    if model is None:
        folder = Path(".cache/bench-small-qwen2_vl")
        if not (folder / "model.safetensors").exists():
            make_tiny_model(folder, arch="qwen2_vl", preset="small")
        model = str(folder)
    print(f"model={model} image={args.image_size}px threads={torch.get_num_threads()}")
    for prefix_caching in (False, True):
        run(model, args.image_size, args.repeats, prefix_caching)


if __name__ == "__main__":
    main()
