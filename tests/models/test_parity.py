"""Native models against transformers on the same tiny checkpoints: prefill logits, chunked
prefill and decode through the paged KV cache (block size 4, so every sequence spans many
blocks), batched sequences, and videos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from tests.models.paged import Chunk, PagedKV, run
from vlmserve.models.base import VLModel
from vlmserve.models.loader import load_model
from vlmserve.models.rope import mrope_positions
from vlmserve.multimodal.processor import load_image_processor_config, process_video

# fp32 on both sides; measured max |diff| is ~1e-6 (the logits have std ~0.3).
TOLERANCE = 1e-4
BLOCK_SIZE = 4

HF_CLASSES: dict[str, Any] = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}


def make_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = rng.integers(0, 64, size=(height, width, 3))
    return Image.fromarray(np.clip(ramp * 0.75 + noise, 0, 255).astype(np.uint8))


@dataclass
class Pair:
    arch: str
    ours: VLModel
    hf: Any
    tokenizer: Tokenizer
    hf_processor: Any
    folder: Path

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def prompt(self, grids: list[tuple[int, int, int]], video: bool = False) -> list[int]:
        c = self.ours.config
        pad = c.video_token_id if video else c.image_token_id
        ids = self.encode("<|im_start|>user\n")
        for i, (t, h, w) in enumerate(grids):
            ids += self.encode(f"Picture {i + 1}: ")
            ids += [c.vision_start_token_id] + [pad] * (t * h * w // 4) + [c.vision_end_token_id]
        return ids + self.encode("Describe it.<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def pair(request: pytest.FixtureRequest) -> Pair:
    arch = request.param
    folder: Path = request.getfixturevalue(f"tiny_{arch}")
    ours, _ = load_model(str(folder), torch.float32, torch.device("cpu"))
    hf = HF_CLASSES[arch].from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    return Pair(
        arch,
        ours,
        hf.eval(),
        Tokenizer.from_file(str(folder / "tokenizer.json")),
        Qwen2VLImageProcessorPil.from_pretrained(folder),
        folder,
    )


def hf_image_inputs(pair: Pair, sizes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    if not sizes:
        return {}
    images = [make_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    out = pair.hf_processor(images, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def hf_logits(pair: Pair, ids: list[int], **inputs: Any) -> torch.Tensor:
    input_ids = torch.tensor([ids])
    c = pair.ours.config
    token_types = (input_ids == c.image_token_id).int() + 2 * (input_ids == c.video_token_id).int()
    with torch.inference_mode():
        out = pair.hf(input_ids=input_ids, mm_token_type_ids=token_types, **inputs)
    return out.logits[0].float()


def our_embeds(pair: Pair, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat(pair.ours.embed_multimodal(pixels, grid))


IMAGE_SETS = {
    "text-only": [],
    "one-image": [(56, 56)],
    "three-images": [(56, 56), (140, 84), (100, 190)],
}


@pytest.mark.parametrize("images", IMAGE_SETS.values(), ids=IMAGE_SETS.keys())
def test_prefill_logits_match_transformers(pair: Pair, images: list[tuple[int, int]]) -> None:
    inputs = hf_image_inputs(pair, images)
    grids = [tuple(g) for g in inputs["image_grid_thw"].tolist()] if inputs else []
    ids = pair.prompt(grids)
    expected = hf_logits(pair, ids, **inputs)

    positions, _ = mrope_positions(ids, grids, [], pair.ours.config)
    embeds = our_embeds(pair, inputs["pixel_values"], inputs["image_grid_thw"]) if inputs else None
    kv = PagedKV(pair.ours, 64, BLOCK_SIZE, torch.float32)
    logits = run(pair.ours, kv, [Chunk(ids, positions, 0, kv.allocate(len(ids)), embeds)])

    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() < TOLERANCE


def hf_decode(
    pair: Pair, ids: list[int], steps: int, **inputs: Any
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy continuation by transformers with its KV cache: tokens and each step's logits."""
    input_ids = torch.tensor([ids])
    c = pair.ours.config
    token_types = (input_ids == c.image_token_id).int() + 2 * (input_ids == c.video_token_id).int()
    # transformers keeps the last prompt's M-RoPE offset on the model (generate() resets it);
    # a text-only prompt would otherwise decode with a previous image prompt's offset.
    pair.hf.model.rope_deltas = None
    with torch.inference_mode():
        out = pair.hf(input_ids=input_ids, mm_token_type_ids=token_types, use_cache=True, **inputs)
        tokens, logits = [], [out.logits[0, -1].float()]
        for _ in range(steps):
            tokens.append(int(logits[-1].argmax()))
            out = pair.hf(
                input_ids=torch.tensor([[tokens[-1]]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            logits.append(out.logits[0, -1].float())
    return tokens, logits


def test_chunked_prefill_then_decode_matches_transformers(pair: Pair) -> None:
    inputs = hf_image_inputs(pair, [(140, 84)])
    grids = [tuple(g) for g in inputs["image_grid_thw"].tolist()]
    ids = pair.prompt(grids)
    tokens, expected = hf_decode(pair, ids, steps=5, **inputs)

    config = pair.ours.config
    positions, delta = mrope_positions(ids, grids, [], config)
    embeds = our_embeds(pair, inputs["pixel_values"], inputs["image_grid_thw"])
    kv = PagedKV(pair.ours, 64, BLOCK_SIZE, torch.float32)
    table = kv.allocate(len(ids) + len(tokens))
    # Split the prompt in the middle of the image so each chunk carries part of its rows.
    cut = ids.index(config.image_token_id) + 7
    first_rows = sum(1 for t in ids[:cut] if t == config.image_token_id)
    run(pair.ours, kv, [Chunk(ids[:cut], positions[:, :cut], 0, table, embeds[:first_rows])])
    logits = run(
        pair.ours, kv, [Chunk(ids[cut:], positions[:, cut:], cut, table, embeds[first_rows:])]
    )[-1:]
    for step, token in enumerate([None, *tokens]):
        if token is not None:
            length = len(ids) + step - 1  # tokens before this one
            position = torch.full((3, 1), length + delta)
            logits = run(pair.ours, kv, [Chunk([token], position, length, table)])
        assert (logits[0] - expected[step]).abs().max().item() < TOLERANCE, f"step {step}"


def test_batched_sequences_match_single_runs(pair: Pair) -> None:
    """An image prompt and a text prompt prefilled in one step, then decoded together."""
    inputs = hf_image_inputs(pair, [(56, 56)])
    grids = [tuple(g) for g in inputs["image_grid_thw"].tolist()]
    prompts = [pair.prompt(grids), pair.encode("<|im_start|>user\nHello there<|im_end|>\n")]
    runs = [hf_decode(pair, prompts[0], 3, **inputs), hf_decode(pair, prompts[1], 3)]

    config = pair.ours.config
    rope = [
        mrope_positions(prompts[0], grids, [], config),
        mrope_positions(prompts[1], [], [], config),
    ]
    embeds = our_embeds(pair, inputs["pixel_values"], inputs["image_grid_thw"])
    kv = PagedKV(pair.ours, 64, BLOCK_SIZE, torch.float32)
    tables = [kv.allocate(len(p) + 3) for p in prompts]
    chunks = [
        Chunk(prompts[0], rope[0][0], 0, tables[0], embeds),
        Chunk(prompts[1], rope[1][0], 0, tables[1]),
    ]
    logits = run(pair.ours, kv, chunks)
    last = [len(prompts[0]) - 1, len(prompts[0]) + len(prompts[1]) - 1]
    for step in range(4):
        for i in range(2):
            diff = (logits[last[i]] - runs[i][1][step]).abs().max().item()
            assert diff < TOLERANCE, f"sequence {i}, step {step}"
        if step == 3:
            break
        chunks = []
        for i, prompt in enumerate(prompts):
            length = len(prompt) + step
            position = torch.full((3, 1), length + rope[i][1])
            chunks.append(Chunk([runs[i][0][step]], position, length, tables[i]))
        logits = run(pair.ours, kv, chunks)
        last = [0, 1]


def test_video_prefill_and_decode_match_transformers(pair: Pair) -> None:
    """Six frames = three temporal patches: for Qwen2.5-VL the temporal positions (spaced by
    tokens_per_second) outgrow the spatial ones, which moves the decode offset."""
    frames = [make_image(56, 84, seed=10 + i) for i in range(6)]
    pixels, grid = process_video(frames, load_image_processor_config(pair.folder))
    grid_thw = torch.tensor([grid])
    ids = pair.prompt([grid], video=True)
    extra: dict[str, Any] = {"pixel_values_videos": pixels, "video_grid_thw": grid_thw}
    seconds = [1.0]
    if pair.arch == "qwen2_5_vl":
        extra["second_per_grid_ts"] = torch.tensor(seconds)
    tokens, expected = hf_decode(pair, ids, steps=2, **extra)

    positions, delta = mrope_positions(ids, [], [grid], pair.ours.config, seconds)
    embeds = our_embeds(pair, pixels, grid_thw)
    kv = PagedKV(pair.ours, 64, BLOCK_SIZE, torch.float32)
    table = kv.allocate(len(ids) + len(tokens))
    logits = run(pair.ours, kv, [Chunk(ids, positions, 0, table, embeds)])[-1:]
    for step, token in enumerate([None, *tokens]):
        if token is not None:
            length = len(ids) + step - 1
            position = torch.full((3, 1), length + delta)
            logits = run(pair.ours, kv, [Chunk([token], position, length, table)])
        assert (logits[0] - expected[step]).abs().max().item() < TOLERANCE, f"step {step}"
