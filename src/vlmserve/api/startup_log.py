"""The start-up summary of `vlmserve serve`: what was chosen and why, in a few log lines a
newcomer can read, so nothing about the running server has to be guessed: the server's
(security, media, registry, the address) once the port is bound, and each model's (device,
dtype, threads, KV cache, context length) whenever it becomes ready."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING

import torch

from vlmserve.api.server_config import ServerConfig
from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.engine.kv_sizing import format_bytes
from vlmserve.registry import ModelInfo

if TYPE_CHECKING:
    from vlmserve.engine.engine import LLMEngine

logger = logging.getLogger("vlmserve.server")

_ARCH_NAMES = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL"}
# The engine explains itself in EngineConfig's field names; a server is configured with the
# flags of the same names (`max_model_len` -> `--max-model-len`).
_FIELDS = "|".join(f.name for f in dataclasses.fields(EngineConfig) if "_" in f.name)
_FIELD = re.compile(rf"\b({_FIELDS})\b")


def as_flags(text: str) -> str:
    return _FIELD.sub(lambda m: "--" + m.group(1).replace("_", "-"), text)


def model_summary(engine: LLMEngine, model: ModelInfo) -> list[str]:
    """What was chosen for one model and why (logged whenever a model becomes ready)."""
    engine_config, plan = engine.config, engine.kv_plan
    module = engine.model
    parameters = 0
    if isinstance(module, torch.nn.Module):
        # Quantized layers keep their weights as buffers (models/quantize.py).
        parameters = sum(p.numel() for p in module.parameters()) + sum(
            b.numel() for name, b in module.named_buffers() if name.endswith(".weight")
        )
    dtype = str(engine.dtype).removeprefix("torch.")
    if engine_config.quantization != "none":
        dtype += f" with {engine_config.quantization} decoder GEMMs (--quantization)"
    count = torch.get_num_threads()
    threads = f", {count} torch thread{'s' * (count > 1)}" if engine.device.type == "cpu" else ""
    weights = "random weights (load format dummy)" if engine_config.load_format == "dummy" else ""
    context = f"context: max_model_len {engine.max_model_len}"
    if plan.max_model_len_note:
        context += f" ({plan.max_model_len_note})"
    return [
        f"model {model.name!r} from {engine_config.model}: "
        f"{_ARCH_NAMES.get(engine.model_config.arch, engine.model_config.arch)}, "
        f"{parameters / 1e6:.1f} M parameters{', ' + weights if weights else ''}, "
        f"{dtype} on {engine.device}{threads}",
        f"KV cache {format_bytes(plan.bytes)} = {plan.tokens} tokens in {plan.num_blocks - 1} "
        f"blocks of {plan.block_size}; sized by {plan.reason}",
        f"{context}; batches: up to max_num_seqs {engine_config.max_num_seqs} sequences, "
        f"max_num_batched_tokens {engine_config.max_num_batched_tokens} tokens per step; "
        "prefix caching "
        f"{_on(engine_config.enable_prefix_caching)}, chunked prefill "
        f"{_on(engine_config.enable_chunked_prefill)}",
    ]


def server_summary(
    config: ServerConfig, media: MediaConfig, port: int, registry_path: str
) -> list[str]:
    """What the server was started with (logged once the port is bound, before any load)."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    admin = "on (admin key)" if config.admin_api_key else "off (no --admin-api-key)"
    return [
        f"security: API key {_on(config.api_key is not None)}"
        + (f", tenant keys from {config.api_keys_file}" if config.api_keys_file else "")
        + ", /metrics "
        f"{'behind the admin key' if config.admin_api_key else 'open'}; "
        f"media: {media_policy(media)}",
        f"models: registry {registry_path}; model administration {admin}",
        f"listening on http://{host}:{port} (OpenAI API under /v1; GET /ready "
        "answers 200 once the start-up model is loaded)",
    ]


def media_policy(media: MediaConfig) -> str:
    hosts = ", ".join(media.allowed_media_domains) or "any public host"
    addresses = (
        "private addresses allowed"
        if media.allow_private_media_addresses
        else "private addresses refused"
    )
    ports = ",".join(map(str, media.allowed_media_ports))
    redirects = (
        f"{media.media_max_redirects} redirects" if media.media_max_redirects else ("no redirects")
    )
    files = (
        f"file: URLs under {media.allowed_local_media_path}"
        if media.allowed_local_media_path
        else "file: URLs off"
    )
    return f"{hosts} on ports {ports}, {addresses}, {redirects}, {files}"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def log_model_summary(engine: LLMEngine, model: ModelInfo) -> None:
    for line in model_summary(engine, model):
        logger.info("%s", as_flags(line))


def log_server_summary(
    config: ServerConfig, media: MediaConfig, port: int, registry_path: str
) -> None:
    for line in server_summary(config, media, port, registry_path):
        logger.info("%s", as_flags(line))
