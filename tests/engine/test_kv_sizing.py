"""KV-cache sizing: from the memory available, explicit sizes honoured, the context lowered
(default) or refused (explicit) when it does not fit, and every choice explained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlmserve.config import EngineConfig
from vlmserve.engine import kv_sizing
from vlmserve.engine.engine import build_engine
from vlmserve.engine.kv_sizing import GIB, plan_kv_cache
from vlmserve.models.config import ModelConfig, load_model_config

BLOCK_BYTES = 16 * 512  # the tiny model in bf16: 512 bytes per token, 16 tokens per block
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_config(tiny_qwen2_vl: Path) -> ModelConfig:
    return load_model_config(tiny_qwen2_vl)


def plan(model_config: ModelConfig, **kwargs: object) -> kv_sizing.KVCachePlan:
    config = EngineConfig(model="unused", **kwargs)  # type: ignore[arg-type]
    return plan_kv_cache(config, model_config, BLOCK_BYTES, CPU, torch.bfloat16)


def test_cpu_default_plans_one_full_sequence_and_short_others(
    model_config: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv_sizing, "available_memory_bytes", lambda: 16 * GIB)
    result = plan(model_config)
    assert result.max_model_len == 32768 and result.max_model_len_note is None
    assert result.tokens == 32 * 4096  # max_num_seqs × 4096 ≥ one sequence of 32768
    assert result.bytes == result.num_blocks * BLOCK_BYTES < 100 * 2**20  # tiny stays small
    assert (
        result.reason
        == "max_num_seqs 32 × 4096 tokens, at least one max_model_len of 32768 (CPU default)"
    )
    # The case: two sequences, a long context. One full sequence must fit.
    long = plan(model_config, max_num_seqs=2, max_model_len=32768)
    assert long.tokens >= 32768 and long.max_model_len == 32768


def test_cpu_default_is_bounded_by_available_memory(
    model_config: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv_sizing, "available_memory_bytes", lambda: 8 * 2**20)
    result = plan(model_config)  # 50 % of 8 MiB: 512 blocks, 8176 usable tokens
    assert result.num_blocks == 4 * 2**20 // BLOCK_BYTES
    assert result.max_model_len == result.tokens == 8176
    assert result.max_model_len_note is not None and "lowered from 32768" in (
        result.max_model_len_note
    )
    assert "50% of the 8.0 MiB of memory available; 131072 tokens" in result.reason
    with pytest.raises(
        ValueError, match=r"max_model_len=20000 does not fit in the KV cache of 8176 tokens"
    ):
        plan(model_config, max_model_len=20000)


def test_explicit_sizes_win(model_config: ModelConfig) -> None:
    assert plan(model_config, num_kv_blocks=40).num_blocks == 40
    sized = plan(model_config, kv_cache_memory_bytes=100 * BLOCK_BYTES, max_model_len=512)
    assert sized.num_blocks == 100 and "kv_cache_memory_bytes=819200" in sized.reason


def test_model_positions_bound_the_context(model_config: ModelConfig) -> None:
    result = plan(model_config, max_model_len=10**6, num_kv_blocks=10**5)
    assert result.max_model_len == model_config.max_position_embeddings
    assert "max_position_embeddings" in (result.max_model_len_note or "")


def test_cuda_uses_gpu_memory_utilization(
    model_config: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    total, free = 80 * GIB, 70 * GIB  # 10 GiB in use (weights, context, neighbours)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
    config = EngineConfig(model="unused", max_num_seqs=1000, max_model_len=32768)
    reserve = kv_sizing.activation_reserve_bytes(config, model_config, torch.bfloat16)
    block_7b = 16 * 2 * 28 * 4 * 128 * 2  # Qwen2.5-VL-7B's K and V per 16 tokens, bf16
    cuda = torch.device("cuda")
    result = plan_kv_cache(config, model_config, block_7b, cuda, torch.bfloat16)
    expected = (int(0.9 * total) - 10 * GIB - reserve) // block_7b
    assert result.num_blocks == expected
    assert "gpu_memory_utilization=0.9 of 80.0 GiB, less 10.0 GiB in use" in result.reason
    # A small load is capped at what its sequences can use.
    small = EngineConfig(model="unused", max_num_seqs=2, max_model_len=1024)
    capped = plan_kv_cache(small, model_config, BLOCK_BYTES, cuda, torch.bfloat16)
    assert capped.num_blocks == 2 * 1024 // 16 + 1 and "capped" in capped.reason
    with pytest.raises(ValueError, match="raise gpu_memory_utilization"):
        plan_kv_cache(
            EngineConfig(model="unused", gpu_memory_utilization=0.1),
            model_config,
            BLOCK_BYTES,
            cuda,
            torch.bfloat16,
        )


def test_engine_with_two_long_sequences_starts(tiny_qwen2_vl: Path) -> None:
    config = EngineConfig(model=str(tiny_qwen2_vl), max_num_seqs=2, max_model_len=32768)
    engine = build_engine(config)
    try:
        assert engine.max_model_len == 32768
        assert engine.block_manager.num_blocks == engine.kv_plan.num_blocks
        assert engine.kv_plan.tokens >= 32768
    finally:
        engine.close()


def test_available_memory_is_positive() -> None:
    assert kv_sizing.available_memory_bytes() > 0
