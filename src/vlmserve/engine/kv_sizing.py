"""How big the paged KV cache is, and the context length that fits in it.

One function, `plan_kv_cache`, decides both from the config and the memory actually
available, and says why in words the start-up log can show:

- an explicit `num_kv_blocks` or `kv_cache_memory_bytes` wins;
- on CUDA, vLLM's rule: the cache takes what is left of `gpu_memory_utilization` of the
  device after what is already in use (weights included) and a reserve for activations;
- on CPU, room for one sequence of `max_model_len` tokens and `max_num_seqs` sequences of
  up to 4096 tokens (most requests are short; tiny test models stay at megabytes), at most
  `CPU_KV_RAM_FRACTION` of the memory available now.

On CUDA the cache never exceeds what `max_num_seqs` sequences of `max_model_len` tokens use.
A default `max_model_len` that does not fit is lowered to the cache's capacity; an explicit
one is an error at start-up.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmserve.config import EngineConfig
from vlmserve.models.config import ModelConfig

logger = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = 32768
CPU_TOKENS_PER_SEQ = 4096  # what the CPU default plans for each of max_num_seqs sequences
CPU_KV_RAM_FRACTION = 0.5  # of the memory available when the cache is allocated
GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class KVCachePlan:
    num_blocks: int  # block 0 included (reserved as padding)
    block_size: int
    block_bytes: int  # K and V of one block, all layers
    max_model_len: int
    reason: str  # how the size was chosen, for the start-up log
    max_model_len_note: str | None = None  # why max_model_len is lower than asked, if it is

    @property
    def bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    @property
    def tokens(self) -> int:
        """Token slots requests can use (block 0 is padding)."""
        return (self.num_blocks - 1) * self.block_size


def plan_kv_cache(
    config: EngineConfig,
    model_config: ModelConfig,
    block_bytes: int,
    device: torch.device,
    dtype: torch.dtype,
) -> KVCachePlan:
    block_size = config.block_size
    max_len = config.max_model_len or DEFAULT_MAX_MODEL_LEN
    note = None
    if max_len > model_config.max_position_embeddings:
        asked = "max_model_len" if config.max_model_len else "the default max_model_len"
        note = (
            f"{asked} {max_len} is above the model's max_position_embeddings "
            f"({model_config.max_position_embeddings})"
        )
        max_len = model_config.max_position_embeddings
    if config.num_kv_blocks is not None:
        num_blocks, reason = config.num_kv_blocks, f"num_kv_blocks={config.num_kv_blocks}"
    elif config.kv_cache_memory_bytes is not None:
        num_blocks = config.kv_cache_memory_bytes // block_bytes
        reason = f"kv_cache_memory_bytes={config.kv_cache_memory_bytes}"
    elif device.type == "cuda":
        num_blocks, reason = _cuda_blocks(config, model_config, block_bytes, device, dtype)
        # Every running sequence at full length: more blocks could only hold old prefixes.
        useful = config.max_num_seqs * _blocks_for(max_len, block_size) + 1
        if num_blocks > useful:
            num_blocks = useful
            reason += (
                f"; capped at what max_num_seqs {config.max_num_seqs} sequences of "
                f"max_model_len {max_len} tokens can use"
            )
    else:
        tokens = max(max_len, config.max_num_seqs * min(max_len, CPU_TOKENS_PER_SEQ))
        wanted = _blocks_for(tokens, block_size) + 1
        available = available_memory_bytes()
        room = int(available * CPU_KV_RAM_FRACTION) // block_bytes
        num_blocks = min(wanted, room)
        reason = (
            f"max_num_seqs {config.max_num_seqs} × {min(max_len, CPU_TOKENS_PER_SEQ)} tokens, "
            f"at least one max_model_len of {max_len} (CPU default)"
        )
        if room < wanted:
            reason = (
                f"{CPU_KV_RAM_FRACTION:.0%} of the {format_bytes(available)} of memory "
                f"available; {tokens} tokens wanted ({reason})"
            )
    num_blocks = max(2, num_blocks)
    capacity = (num_blocks - 1) * block_size
    if max_len > capacity:
        if config.max_model_len is not None and note is None:
            raise ValueError(
                f"max_model_len={config.max_model_len} does not fit in the KV cache of "
                f"{capacity} tokens ({reason}); lower max_model_len or give the cache "
                "more memory (kv_cache_memory_bytes, or gpu_memory_utilization on CUDA)"
            )
        # A default context longer than the cache would turn every request that asks for
        # "until the context is full" into a 400: shrink the context instead.
        note = (note + "; then " if note else "") + (
            f"lowered from {max_len} to the KV cache's {capacity} tokens"
        )
        max_len = capacity
    if note:
        logger.warning("max_model_len %d: %s", max_len, note)
    return KVCachePlan(num_blocks, block_size, block_bytes, max_len, reason, note)


def _blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def _cuda_blocks(
    config: EngineConfig,
    model_config: ModelConfig,
    block_bytes: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[int, str]:
    utilization = config.gpu_memory_utilization
    if not 0 < utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    free, total = torch.cuda.mem_get_info(device)
    in_use = total - free  # our weights, other processes, the CUDA context
    reserve = activation_reserve_bytes(config, model_config, dtype)
    budget = int(utilization * total) - in_use - reserve
    reason = (
        f"gpu_memory_utilization={utilization} of {format_bytes(total)}, less "
        f"{format_bytes(in_use)} in use (weights included) and {format_bytes(reserve)} "
        "reserved for activations"
    )
    if budget < 2 * block_bytes:
        raise ValueError(
            f"no room for the KV cache: {reason} leaves {format_bytes(max(0, budget))}; raise "
            "gpu_memory_utilization, free the GPU or set kv_cache_memory_bytes"
        )
    return budget // block_bytes, reason


def activation_reserve_bytes(
    config: EngineConfig, model_config: ModelConfig, dtype: torch.dtype
) -> int:
    """An estimate of the peak activation memory of one step (vLLM measures it with a
    profiling run): the widest layer's temporaries for a full token budget, float32 logits
    and their softmax for every sequence, and a fixed allowance for the vision tower and
    library workspaces."""
    element = torch.tensor([], dtype=dtype).element_size()
    per_token = (4 * model_config.hidden_size + 3 * model_config.intermediate_size) * element
    logits = config.max_num_seqs * model_config.vocab_size * 4 * 3
    return config.max_num_batched_tokens * per_token + logits + 512 * MIB


def format_bytes(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def available_memory_bytes() -> int:
    """Memory this process could still take: the kernel's MemAvailable, lowered by a
    cgroup limit (containers) where one is set."""
    available = _meminfo_available()
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: free pages, an underestimate (page cache counts as used)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * GIB


def _cgroup_room() -> int | None:
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 2**60:
                return None
            return max(0, int(limit_text) - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None
