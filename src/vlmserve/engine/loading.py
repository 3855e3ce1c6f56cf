"""Loading a checkpoint for an engine: folder (or hub download), device and dtype, weights,
tokenizer and image-processor settings, gathered in one `LoadedModel`.

This is the slow, blocking part of bringing a model up (disk, maybe network); `LLMEngine`
is then built from a `LoadedModel` without touching the disk (see `build_engine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlmserve.config import EngineConfig
from vlmserve.models.base import VLModel
from vlmserve.models.config import ModelConfig, load_model_config
from vlmserve.models.hf_tokenizer import TokenizerBundle, load_tokenizer
from vlmserve.models.loader import load_model, resolve_model_folder
from vlmserve.multimodal.processor import ImageProcessorConfig, load_image_processor_config


def cpu_has_native_bf16() -> bool:
    """bf16 matmuls run natively (AVX512-BF16 or AMX) rather than emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device_dtype(
    config: EngineConfig, checkpoint_dtype: str
) -> tuple[torch.device, torch.dtype]:
    """`auto` dtype is the checkpoint's (as vLLM does), except where the device would only
    emulate it: bf16/fp16 checkpoints run in float32 on CPUs without native bf16."""
    device_name = config.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_name)
    except RuntimeError:
        device = torch.device("meta")  # refused just below, with the choices
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={config.device!r} is not one of auto, cpu, cuda, cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device={config.device!r}, but CUDA is not available here (torch "
                f"{torch.__version__}); use device='cpu' or 'auto'"
            )
        if device.index is not None and device.index >= count:
            raise ValueError(f"device={config.device!r}, but this machine has {count} GPU(s)")
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if config.dtype == "auto":
        dtype = names.get(checkpoint_dtype, torch.float32)
        if device.type == "cpu" and dtype != torch.float32:
            dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    elif config.dtype in names:
        dtype = names[config.dtype]
    else:
        raise ValueError(f"dtype must be auto or one of {sorted(names)}, got {config.dtype!r}")
    return device, dtype


@dataclass
class LoadedModel:
    folder: Path
    device: torch.device
    dtype: torch.dtype
    model: VLModel
    model_config: ModelConfig
    tokenizer: TokenizerBundle
    image_config: ImageProcessorConfig


def load_checkpoint(config: EngineConfig) -> LoadedModel:
    folder = resolve_model_folder(config.model, weights=config.load_format == "auto")
    device, dtype = resolve_device_dtype(config, load_model_config(folder).checkpoint_dtype)
    model, model_config = load_model(str(folder), dtype, device, config.load_format, config.seed)
    return LoadedModel(
        folder=folder,
        device=device,
        dtype=dtype,
        model=model,
        model_config=model_config,
        tokenizer=load_tokenizer(config.tokenizer or folder),
        image_config=load_image_processor_config(folder),
    )


def set_cpu_threads(num_threads: int) -> None:
    """torch's intra-op thread count. Process-wide, so only the process owner calls it (the
    CLI's `serve`, an offline `LLM` given `cpu_threads`, a replica): never an engine, since
    several engines may share one process."""
    if num_threads < 1:
        raise ValueError(f"cpu_threads must be at least 1, got {num_threads}")
    torch.set_num_threads(num_threads)
