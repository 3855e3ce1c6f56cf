"""config.json parsing: the flat hub format, the transformers-5 format, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import Qwen2_5_VLConfig

from vlmserve.models.config import load_model_config, parse_model_config

# Modeled on Qwen/Qwen2.5-VL-7B-Instruct's config.json (flat: text keys at the top level).
QWEN2_5_VL_7B_FLAT: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}

# Modeled on Qwen/Qwen2-VL-7B-Instruct's config.json.
QWEN2_VL_7B_FLAT: dict[str, Any] = {
    **{k: v for k, v in QWEN2_5_VL_7B_FLAT.items() if k != "vision_config"},
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "max_position_embeddings": 32768,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
    },
}


def test_flat_qwen2_5_vl_7b() -> None:
    config = parse_model_config(QWEN2_5_VL_7B_FLAT, {"eos_token_id": [151645, 151643]})
    assert config.arch == "qwen2_5_vl"
    assert (config.hidden_size, config.intermediate_size) == (3584, 18944)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (28, 4, 128)
    assert config.mrope_section == (16, 24, 24)
    assert config.rope_theta == 1e6 and config.rms_norm_eps == 1e-6
    assert config.max_position_embeddings == 128000
    assert config.eos_token_ids == (151645, 151643)
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    v = config.vision
    assert (v.depth, v.hidden_size, v.intermediate_size, v.num_heads) == (32, 1280, 3420, 16)
    assert (v.out_hidden_size, v.window_size, v.tokens_per_second) == (3584, 112, 2)
    assert v.fullatt_block_indexes == (7, 15, 23, 31)
    assert (v.in_channels, v.hidden_act, v.rope_theta) == (3, "silu", 10000.0)


def test_flat_format_reads_like_transformers() -> None:
    ours = parse_model_config(QWEN2_5_VL_7B_FLAT)
    hf = Qwen2_5_VLConfig(**QWEN2_5_VL_7B_FLAT)
    assert ours.mrope_section == tuple(hf.text_config.rope_parameters["mrope_section"])
    assert ours.rope_theta == hf.text_config.rope_parameters["rope_theta"]
    assert ours.num_key_value_heads == hf.text_config.num_key_value_heads
    assert ours.vision.out_hidden_size == hf.vision_config.out_hidden_size


def test_flat_qwen2_vl_7b() -> None:
    config = parse_model_config(QWEN2_VL_7B_FLAT)
    assert config.arch == "qwen2_vl"
    v = config.vision
    # Qwen2-VL: embed_dim is the tower width, hidden_size the merger output.
    assert (v.hidden_size, v.out_hidden_size, v.intermediate_size) == (1280, 3584, 5120)
    assert v.hidden_act == "quick_gelu" and v.window_size is None
    assert config.eos_token_ids == (151645,)


def test_transformers_5_format(tiny_qwen2_5_vl: Path) -> None:
    config = load_model_config(tiny_qwen2_5_vl)
    raw = json.loads((tiny_qwen2_5_vl / "config.json").read_text())
    text = raw["text_config"]
    assert config.arch == "qwen2_5_vl"
    assert config.hidden_size == text["hidden_size"] == 128
    assert config.mrope_section == tuple(text["rope_parameters"]["mrope_section"])
    assert config.vision.window_size == raw["vision_config"]["window_size"]
    assert config.vision.fullatt_block_indexes == (1,)
    assert config.image_token_id == raw["image_token_id"]


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_missing_config_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no config\.json in .*"):
        load_model_config(tmp_path)


def test_unreadable_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read .*config\.json"):
        load_model_config(tmp_path)


def test_unknown_architecture(tmp_path: Path) -> None:
    raw = {**QWEN2_5_VL_7B_FLAT, "model_type": "llava", "architectures": ["LlavaForCausalLM"]}
    with pytest.raises(ValueError, match=r"config\.json: unsupported architecture.*llava"):
        load_model_config(write(tmp_path, raw))


def test_architecture_name_alone_is_enough() -> None:
    raw = {k: v for k, v in QWEN2_VL_7B_FLAT.items() if k != "model_type"}
    assert parse_model_config(raw).arch == "qwen2_vl"


@pytest.mark.parametrize("key", ["hidden_size", "vocab_size", "num_hidden_layers"])
def test_missing_required_text_key(tmp_path: Path, key: str) -> None:
    raw = {k: v for k, v in QWEN2_5_VL_7B_FLAT.items() if k != key}
    with pytest.raises(ValueError, match=rf"config\.json: missing required key '{key}'"):
        load_model_config(write(tmp_path, raw))


def test_missing_required_vision_key(tmp_path: Path) -> None:
    vision = {k: v for k, v in QWEN2_VL_7B_FLAT["vision_config"].items() if k != "embed_dim"}
    raw = {**QWEN2_VL_7B_FLAT, "vision_config": vision}
    with pytest.raises(ValueError, match="missing required key 'embed_dim' in vision_config"):
        load_model_config(write(tmp_path, raw))


def test_mrope_section_must_cover_half_the_head() -> None:
    raw = {**QWEN2_5_VL_7B_FLAT, "rope_scaling": {"type": "mrope", "mrope_section": [8, 8, 8]}}
    with pytest.raises(ValueError, match="mrope_section"):
        parse_model_config(raw)
