"""What a Qwen-VL checkpoint's config says, as frozen dataclasses: `ModelConfig`,
`VisionConfig` and `load_model_config`, the only reader of config.json and
generation_config.json.

Two on-disk formats exist: the flat one of hub checkpoints (text keys at the top level,
`rope_scaling: {type: mrope, mrope_section}`) and the transformers-5 one (`text_config` /
`vision_config` sub-dicts, `rope_parameters`). Both become the same `ModelConfig`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Arch = Literal["qwen2_vl", "qwen2_5_vl"]

_ARCH_BY_NAME: dict[str, Arch] = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
}

# transformers' defaults, used when a config leaves a key out so we read it as HF does.
_DEFAULT_TEXT_ROPE_THETA = 1_000_000.0
_DEFAULT_VISION_ROPE_THETA = 10_000.0
_DEFAULT_MROPE_SECTION = (16, 24, 24)


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower. `hidden_size` is the tower's width (Qwen2-VL calls it `embed_dim`);
    `out_hidden_size` is what the patch merger emits, i.e. the decoder's hidden size."""

    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    out_hidden_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    in_channels: int
    rope_theta: float
    # Qwen2.5-VL only: window attention everywhere except `fullatt_block_indexes`.
    window_size: int | None = None
    fullatt_block_indexes: tuple[int, ...] = ()
    # Qwen2.5-VL only: temporal M-RoPE spacing of video frames.
    tokens_per_second: float | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class ModelConfig:
    arch: Arch
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    max_position_embeddings: int
    tie_word_embeddings: bool
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    eos_token_ids: tuple[int, ...]
    vision: VisionConfig
    # The checkpoint's own dtype ("dtype", or "torch_dtype" in pre-v5 saves); what `auto` runs.
    checkpoint_dtype: str = "float32"


def load_model_config(path: str | Path) -> ModelConfig:
    """Read `path`/config.json (and generation_config.json when present)."""
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"no config.json in {folder}")
    raw = _read_json(config_file)
    generation_file = folder / "generation_config.json"
    generation = _read_json(generation_file) if generation_file.is_file() else {}
    return parse_model_config(raw, generation, source=str(config_file))


def parse_model_config(
    raw: dict[str, Any], generation: dict[str, Any] | None = None, source: str = "config.json"
) -> ModelConfig:
    """Build a `ModelConfig` from already-parsed JSON; `source` names the file in errors."""
    arch = _arch(raw, source)
    text = raw.get("text_config") or raw
    vision_raw = raw.get("vision_config")
    if not isinstance(vision_raw, dict):
        raise ValueError(f"{source}: missing 'vision_config'")

    text_where = "text_config" if "text_config" in raw else "the top level"

    def need(key: str) -> Any:
        return _need(text, key, text_where, source)

    hidden = int(need("hidden_size"))
    num_heads = int(need("num_attention_heads"))
    # transformers derives the head size from hidden/heads and ignores any head_dim key.
    head_dim = hidden // num_heads
    if head_dim * num_heads != hidden:
        raise ValueError(f"{source}: hidden_size {hidden} is not divisible by {num_heads} heads")

    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    section = tuple(int(s) for s in rope.get("mrope_section", _DEFAULT_MROPE_SECTION))
    if len(section) != 3 or 2 * sum(section) != head_dim:
        raise ValueError(
            f"{source}: mrope_section {list(section)} must have 3 parts summing to "
            f"head_dim/2 = {head_dim // 2}"
        )
    rope_theta = float(rope.get("rope_theta", text.get("rope_theta", _DEFAULT_TEXT_ROPE_THETA)))

    eos: list[int] = []
    for table in (raw, text, generation or {}):
        eos.extend(_as_int_list(table.get("eos_token_id")))

    return ModelConfig(
        arch=arch,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_hidden_layers=int(need("num_hidden_layers")),
        num_attention_heads=num_heads,
        num_key_value_heads=int(text.get("num_key_value_heads") or num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-5)),
        rope_theta=rope_theta,
        mrope_section=(section[0], section[1], section[2]),
        max_position_embeddings=int(text.get("max_position_embeddings", 32768)),
        # Pre-v5 saves put tie_word_embeddings inside text_config; either place counts.
        tie_word_embeddings=bool(
            raw.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False)
        ),
        image_token_id=int(raw.get("image_token_id", 151655)),
        video_token_id=int(raw.get("video_token_id", 151656)),
        vision_start_token_id=int(raw.get("vision_start_token_id", 151652)),
        vision_end_token_id=int(raw.get("vision_end_token_id", 151653)),
        eos_token_ids=tuple(dict.fromkeys(eos)),
        vision=_vision_config(arch, vision_raw, hidden, source),
        checkpoint_dtype=str(
            raw.get("dtype") or raw.get("torch_dtype") or text.get("dtype") or "float32"
        ),
    )


def _vision_config(arch: Arch, raw: dict[str, Any], text_hidden: int, source: str) -> VisionConfig:
    def need(key: str) -> Any:
        return _need(raw, key, "vision_config", source)

    rope = raw.get("rope_parameters") or {}
    common: dict[str, Any] = {
        "depth": int(need("depth")),
        "num_heads": int(need("num_heads")),
        "patch_size": int(raw.get("patch_size", 14)),
        "temporal_patch_size": int(raw.get("temporal_patch_size", 2)),
        "spatial_merge_size": int(raw.get("spatial_merge_size", 2)),
        # Hub configs spell it in_chans, transformers-5 in_channels.
        "in_channels": int(raw.get("in_channels", raw.get("in_chans", 3))),
        "rope_theta": float(rope.get("rope_theta", _DEFAULT_VISION_ROPE_THETA)),
    }
    if arch == "qwen2_vl":
        # Qwen2-VL: embed_dim is the tower width and hidden_size the merger's output.
        width = int(need("embed_dim"))
        return VisionConfig(
            hidden_size=width,
            intermediate_size=int(width * raw.get("mlp_ratio", 4)),
            hidden_act=str(raw.get("hidden_act", "quick_gelu")),
            out_hidden_size=int(raw.get("hidden_size", text_hidden)),
            **common,
        )
    fullatt = tuple(int(i) for i in raw.get("fullatt_block_indexes", (7, 15, 23, 31)))
    return VisionConfig(
        hidden_size=int(need("hidden_size")),
        intermediate_size=int(need("intermediate_size")),
        hidden_act=str(raw.get("hidden_act", "silu")),
        out_hidden_size=int(raw.get("out_hidden_size", text_hidden)),
        window_size=int(raw.get("window_size", 112)),
        fullatt_block_indexes=fullatt,
        tokens_per_second=float(raw.get("tokens_per_second", 4)),
        **common,
    )


def _arch(raw: dict[str, Any], source: str) -> Arch:
    names = [raw.get("model_type"), *(raw.get("architectures") or [])]
    for name in names:
        if isinstance(name, str) and name in _ARCH_BY_NAME:
            return _ARCH_BY_NAME[name]
    raise ValueError(
        f"{source}: unsupported architecture (model_type={raw.get('model_type')!r}, "
        f"architectures={raw.get('architectures')!r}); supported: qwen2_vl, qwen2_5_vl"
    )


def _need(table: dict[str, Any], key: str, where: str, source: str) -> Any:
    if key not in table:
        raise ValueError(f"{source}: missing required key '{key}' in {where}")
    return table[key]


def _as_int_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    return [int(value)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
