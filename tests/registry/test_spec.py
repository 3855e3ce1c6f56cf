"""Registrations: keep-alive durations, checks that name the field, and the engine config a
spec loads with (the server's defaults, never another model's per-model facts)."""

from __future__ import annotations

import pytest

from vlmserve.config import EngineConfig
from vlmserve.registry import NEVER, ModelSpec, SpecError, parse_keep_alive


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("45", 45.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        (-1, NEVER),
        ("-1", NEVER),
    ],
)
def test_keep_alive_accepts_seconds_durations_and_never(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", [-2, "-5m", "5 minutes", "m", "", True, None, float("inf")])
def test_keep_alive_refuses_anything_else_naming_the_field(value: object) -> None:
    with pytest.raises(SpecError, match=r"'keep_alive': .* is not a keep-alive") as raised:
        parse_keep_alive(value)
    assert raised.value.field == "keep_alive"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"alias": ""}, "alias"),
        ({"alias": " padded"}, "alias"),
        ({"alias": "tab\there"}, "alias"),
        ({"alias": "x" * 257}, "alias"),
        ({"model_name": " "}, "model_name"),
        ({"tokenizer": ""}, "tokenizer"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"max_num_seqs": -1}, "max_num_seqs"),
        ({"kv_cache_memory_bytes": True}, "kv_cache_memory_bytes"),
        ({"dtype": "int8"}, "dtype"),
        ({"quantization": "awq"}, "quantization"),
        ({"quantization": "int8", "device": "cuda:0"}, "quantization"),
        ({"device": "tpu"}, "device"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
        ({"limit_mm_per_prompt": {"audio": 1}}, "limit_mm_per_prompt.audio"),
        ({"limit_mm_per_prompt": {"image": -1}}, "limit_mm_per_prompt.image"),
        ({"max_waiting": 0}, "max_waiting"),
        ({"keep_alive": -3.0}, "keep_alive"),
    ],
)
def test_bad_values_name_their_field(fields: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"alias": "a", "model_name": "/m", **fields}
    with pytest.raises(SpecError) as raised:
        ModelSpec(**values)  # type: ignore[arg-type]
    assert raised.value.field == field and str(raised.value).startswith(f"'{field}': ")


def test_engine_config_takes_server_defaults_but_not_another_models_facts() -> None:
    defaults = EngineConfig(
        "/the/cli/model",
        dtype="float32",
        max_num_seqs=8,
        chat_template="{{ cli template }}",
        tokenizer="/the/cli/tokenizer",
        max_model_len=4096,
    )
    config = ModelSpec(
        "a", "/models/a", max_num_seqs=2, limit_mm_per_prompt={"image": 1}, quantization="int8"
    )
    built = config.engine_config(defaults)
    assert (built.model, built.dtype, built.max_num_seqs) == ("/models/a", "float32", 2)
    assert built.quantization == "int8" and defaults.quantization == "none"
    assert built.chat_template is None and built.tokenizer is None
    assert built.max_model_len is None and built.mm_limits == {"image": 1, "video": 2}
    assert ModelSpec("a", "/m", max_model_len=64).engine_config(defaults).max_model_len == 64
