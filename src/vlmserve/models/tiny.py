"""`make_tiny_model`: write a random-weight Qwen-VL checkpoint in exact Hugging Face layout
(config, generation config, safetensors, tokenizer, tokenizer config with chat template,
preprocessor config) for tests and benchmarks without network access.

Presets: "tiny" (~2.0 M parameters, fast tests), "small" (~96 M, benchmarks) and "7b"
(the real 7B shapes). "7b" writes everything except the weights: it is meant for
`load_model(..., load_format="dummy")`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from vlmserve.models.config import Arch, parse_model_config
from vlmserve.models.progress import step
from vlmserve.models.tiny_tokenizer import CHAT_TEMPLATE, train_tokenizer
from vlmserve.models.weights import meta_model, random_weights

_ARCHITECTURES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}

# Decoder shapes per preset; vision shapes below. head_dim = hidden / heads and
# mrope_section sums to head_dim / 2 (the real models' 16:24:24 split, scaled).
_TEXT: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, mrope_section=[4, 6, 6],
                 max_position_embeddings=32768),
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=2, mrope_section=[8, 12, 12],
                  max_position_embeddings=32768),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, mrope_section=[16, 24, 24],
               max_position_embeddings=128000),
}  # fmt: skip

_VISION: dict[tuple[str, str], dict[str, Any]] = {
    ("qwen2_vl", "tiny"): dict(depth=2, embed_dim=64, num_heads=4, mlp_ratio=4),
    ("qwen2_vl", "small"): dict(depth=6, embed_dim=384, num_heads=6, mlp_ratio=4),
    ("qwen2_vl", "7b"): dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4),
    # Tiny windows (56 px = 2x2 merge units) so that small test images span several.
    ("qwen2_5_vl", "tiny"): dict(depth=2, hidden_size=64, num_heads=4, intermediate_size=128,
                                 window_size=56, fullatt_block_indexes=[1]),
    ("qwen2_5_vl", "small"): dict(depth=6, hidden_size=384, num_heads=6, intermediate_size=1024,
                                  window_size=112, fullatt_block_indexes=[2, 5]),
    ("qwen2_5_vl", "7b"): dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420,
                               window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
}  # fmt: skip

_REAL_VOCAB_SIZE = 152064  # the 7B checkpoints' (padded) embedding rows
_TOKENIZER_SIZE = 5000  # learned tokens of the default test tokenizer: trains in ~1 s

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def make_tiny_model(
    out_dir: str | Path,
    arch: Arch = "qwen2_vl",
    preset: str = "tiny",
    seed: int = 0,
    tokenizer_size: int = _TOKENIZER_SIZE,
    vocab_size: int | None = None,
) -> Path:
    """Write the checkpoint into `out_dir` (created if needed) and return its path.
    Same arguments, same bytes.

    `tokenizer_size`: ordinary (learned) BPE tokens; the special tokens follow them.
    `vocab_size`: embedding rows, i.e. the logits width (default: the tokenizer padded to a
    multiple of 64; the 7b preset's 152064). Qwen2-VL's real sizes are 151643 and 152064:
    a model with the real vocabulary costs ~40 s of tokenizer training."""
    if arch not in _ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(_ARCHITECTURES)}")
    if preset not in _TEXT:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(_TEXT)}")
    total = tokenizer_size + len(_TOKEN_NAMES)
    if vocab_size is not None and vocab_size < total:
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the tokenizer ({tokenizer_size} tokens "
            f"+ {len(_TOKEN_NAMES)} special tokens = {total})"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    with step(f"training a {tokenizer_size}-token tokenizer"):
        tokenizer = train_tokenizer(tokenizer_size)
    ids = {name: _token_id(tokenizer, f"<|{name}|>") for name in _TOKEN_NAMES}
    tokenizer.save(str(out / "tokenizer.json"))

    config = preset_config(arch, preset, ids, tokenizer.get_vocab_size(), vocab_size)
    generation = {
        "bos_token_id": ids["endoftext"],
        "eos_token_id": [ids["im_end"], ids["endoftext"]],
        "pad_token_id": ids["endoftext"],
    }
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation)
    _write_json(out / "tokenizer_config.json", _tokenizer_config())
    _write_json(out / "preprocessor_config.json", _preprocessor_config(config["vision_config"]))

    if preset != "7b":
        model = meta_model(parse_model_config(config, generation))
        weights = random_weights(model, seed, torch.bfloat16, torch.device("cpu"))
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


_TOKEN_NAMES = (
    "endoftext",
    "im_start",
    "im_end",
    "vision_start",
    "vision_end",
    "image_pad",
    "video_pad",
)


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise RuntimeError(f"the trained tokenizer lacks {token}")
    return token_id


def preset_config(
    arch: Arch,
    preset: str,
    ids: dict[str, int],
    tokenizer_size: int,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """The config.json a preset writes, given the tokenizer's special-token ids by name
    (`image_pad`, `im_end`, ...), its size (specials included) and the embedding rows
    (None: the preset's default)."""
    text = dict(_TEXT[preset])
    mrope_section = text.pop("mrope_section")
    # Pad the embedding to a multiple of 64 rows as the real checkpoints do.
    vocab = vocab_size or (_REAL_VOCAB_SIZE if preset == "7b" else -(-tokenizer_size // 64) * 64)
    vision = dict(_VISION[(arch, preset)])
    out_key = "hidden_size" if arch == "qwen2_vl" else "out_hidden_size"
    vision.update(
        {
            "model_type": f"{arch}_vision",
            out_key: text["hidden_size"],
            "hidden_act": "quick_gelu" if arch == "qwen2_vl" else "silu",
            "in_channels": 3,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0},
        }
    )
    if arch == "qwen2_5_vl":
        vision["tokens_per_second"] = 2
    return {
        "architectures": [_ARCHITECTURES[arch]],
        "model_type": arch,
        "dtype": "bfloat16",
        "image_token_id": ids["image_pad"],
        "video_token_id": ids["video_pad"],
        "vision_start_token_id": ids["vision_start"],
        "vision_end_token_id": ids["vision_end"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": f"{arch}_text",
            "vocab_size": vocab,
            **text,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": mrope_section,
            },
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": ids["endoftext"],
            "eos_token_id": ids["im_end"],
            "pad_token_id": ids["endoftext"],
        },
        "vision_config": vision,
    }


def _tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }


def _preprocessor_config(vision: dict[str, Any]) -> dict[str, Any]:
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": 56 * 56,
        "max_pixels": 28 * 28 * 1280,
        "patch_size": vision["patch_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
        "merge_size": vision["spatial_merge_size"],
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 3,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
