"""Generated checkpoints: loadable by transformers without key warnings, tokenizer ids agree
with the config, deterministic bytes for a seed, and the 7b preset without weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

from vlmserve.models.config import Arch, load_model_config, parse_model_config
from vlmserve.models.tiny import make_tiny_model, preset_config
from vlmserve.models.tiny_tokenizer import SPECIAL_TOKENS
from vlmserve.models.weights import meta_model

HF_CLASSES = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_transformers_loads_without_missing_or_unexpected_keys(
    arch: str, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(f"tiny_{arch}")
    model, info = HF_CLASSES[arch].from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    assert model.dtype == torch.bfloat16
    assert 1_000_000 < model.num_parameters() < 5_000_000


def test_tokenizer_ids_match_the_config(tiny_qwen2_vl: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_qwen2_vl / "tokenizer.json"))
    config = load_model_config(tiny_qwen2_vl)
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    assert config.image_token_id == ids["<|image_pad|>"]
    assert config.video_token_id == ids["<|video_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]
    assert config.eos_token_ids == (ids["<|im_end|>"], ids["<|endoftext|>"])
    assert config.vocab_size >= tokenizer.get_vocab_size()
    assert 4000 <= tokenizer.get_vocab_size() <= 6000
    # Special tokens are atomic and ordinary text round-trips.
    encoded = tokenizer.encode("<|vision_start|><|image_pad|><|vision_end|>Hello, world!")
    vision = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
    assert encoded.ids[:3] == [ids[t] for t in vision]
    assert tokenizer.decode(encoded.ids[3:]) == "Hello, world!"


def test_chat_template_renders_images_like_qwen2_vl(tiny_qwen2_vl: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_same_seed_same_bytes_other_seed_other_weights(
    tmp_path: Path, tiny_qwen2_5_vl: Path
) -> None:
    again = make_tiny_model(tmp_path / "again", arch="qwen2_5_vl", seed=0)
    for name in [p.name for p in tiny_qwen2_5_vl.iterdir()]:
        assert (again / name).read_bytes() == (tiny_qwen2_5_vl / name).read_bytes(), name
    other = make_tiny_model(tmp_path / "other", arch="qwen2_5_vl", seed=1)
    weights = "model.safetensors"
    assert (other / weights).read_bytes() != (tiny_qwen2_5_vl / weights).read_bytes()


def test_7b_preset_writes_real_shapes_and_no_weights(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path, arch="qwen2_5_vl", preset="7b")
    assert not (folder / "model.safetensors").exists()
    config = load_model_config(folder)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (3584, 28, 152064)
    assert config.vision.fullatt_block_indexes == (7, 15, 23, 31)
    params = sum(p.numel() for p in meta_model(config).parameters())
    assert 8.0e9 < params < 8.5e9  # Qwen2.5-VL-7B has 8.29 B parameters
    raw = json.loads((folder / "config.json").read_text())
    assert raw["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_small_preset_size(arch: Arch) -> None:
    names = ["image_pad", "video_pad", "vision_start", "vision_end", "endoftext", "im_end"]
    ids = {name: i for i, name in enumerate(names)}
    config = parse_model_config(preset_config(arch, "small", ids, tokenizer_size=5007))
    params = sum(p.numel() for p in meta_model(config).parameters())
    assert 50e6 < params < 150e6


def test_tokenizer_and_vocab_sizes_are_options(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path, tokenizer_size=1000, vocab_size=1536)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 1000 + len(SPECIAL_TOKENS)
    # As in Qwen2: the special tokens right after the learned ones, the config's ids agree.
    assert tokenizer.token_to_id("<|endoftext|>") == 1000
    config = load_model_config(folder)
    assert config.vocab_size == 1536
    assert config.image_token_id == tokenizer.token_to_id("<|image_pad|>")
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder)
    assert model.get_output_embeddings().weight.shape[0] == 1536


def test_vocab_size_below_the_tokenizer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        make_tiny_model(tmp_path, tokenizer_size=1000, vocab_size=1000)


def test_cli_passes_the_sizes(tmp_path: Path) -> None:
    from vlmserve.cli import parse_args

    args = parse_args(
        ["make-tiny-model", str(tmp_path), "--tokenizer-size", "800", "--vocab-size", "1024"]
    )
    assert args.func(args) == 0
    assert load_model_config(tmp_path).vocab_size == 1024
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 800 + len(SPECIAL_TOKENS)
    default = parse_args(["make-tiny-model", str(tmp_path / "d")])
    assert (default.tokenizer_size, default.vocab_size) == (None, None)
