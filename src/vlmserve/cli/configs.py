"""Parsed `serve` flags -> the config objects of each layer."""

from __future__ import annotations

import argparse
from typing import Any

from vlmserve.config import EngineConfig, MediaConfig, MediaFetchTimeout, RegistryConfig

# --media-io-kwargs: modality -> {key as vLLM users write it: MediaConfig field}.
_MEDIA_IO_KEYS = {
    "image": {
        "max_pixels": "max_image_pixels",
        "rgba_background_color": "rgba_background_color",
        "formats": "allowed_image_formats",
    },
    "video": {
        "fps": "video_fps",
        "num_frames": "video_max_frames",
        "max_decoded_frames": "video_max_decoded_frames",
        "decode_timeout": "video_decode_timeout",
    },
}


def fetch_timeout(text: str) -> MediaFetchTimeout:
    """`CONNECT,READ,TOTAL` seconds, or one number: the total (connect and read then keep
    their defaults, lowered to the total if it is smaller)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SECONDS or CONNECT,READ,TOTAL (e.g. 30 or 5,10,30)"
        ) from None
    if len(values) == 1:
        total = values[0]
        default = MediaFetchTimeout()
        return MediaFetchTimeout(min(default.connect, total), min(default.read, total), total)
    if len(values) == 3:
        return MediaFetchTimeout(*values)
    raise argparse.ArgumentTypeError(f"{text!r}: give one number or three (CONNECT,READ,TOTAL)")


def _media_io(kwargs: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for modality, options in kwargs.items():
        known = _MEDIA_IO_KEYS.get(modality)
        if known is None or not isinstance(options, dict) or set(options) - set(known):
            supported = {m: sorted(keys) for m, keys in _MEDIA_IO_KEYS.items()}
            raise ValueError(
                f"--media-io-kwargs: unsupported entry {modality!r}: {options!r}; "
                f"supported keys: {supported}"
            )
        for key, value in options.items():
            tuple_field = key in ("rgba_background_color", "formats")
            if tuple_field and not isinstance(value, list):
                raise ValueError(f"--media-io-kwargs: {modality}.{key} must be a list")
            fields[known[key]] = tuple(value) if tuple_field else value
    return fields


def media_config(args: argparse.Namespace) -> MediaConfig:
    return MediaConfig(
        allowed_media_domains=tuple(args.allowed_media_domains),
        allow_private_media_addresses=args.allow_private_media_addresses,
        allowed_media_ports=tuple(args.allowed_media_ports),
        media_max_redirects=args.media_max_redirects,
        media_fetch_timeout=args.media_fetch_timeout,
        allowed_local_media_path=args.allowed_local_media_path,
        max_bytes_per_item=args.media_max_bytes_per_item,
        max_bytes_per_request=args.media_max_bytes_per_request,
        max_data_url_size=args.media_max_data_url_size,
        max_concurrent_fetches=args.media_max_concurrent_fetches,
        max_fetches_per_request=args.media_max_fetches_per_request,
        **_media_io(args.media_io_kwargs),
    )


def build_configs(
    args: argparse.Namespace, model: str, name: str | None, template: str | None
) -> tuple[EngineConfig, Any, MediaConfig]:
    from vlmserve.api.server_config import ServerConfig
    from vlmserve.cli.ops_flags import operations_config

    if args.engine_process and getattr(args, "ray", False):
        raise ValueError(
            "--engine-process cannot be combined with --ray: each Ray replica runs its "
            "engine in a process of its own already"
        )
    if args.quantization != "none" and args.device.startswith("cuda"):
        raise ValueError(
            f"--quantization {args.quantization} runs on CPU only (oneDNN int8 GEMMs); "
            f"--device is {args.device}"
        )
    engine_config = EngineConfig(
        model=model,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        limit_mm_per_prompt=args.limit_mm_per_prompt,
        chat_template=template,
        seed=args.seed,
        tokenizer=args.tokenizer,
        load_format=args.load_format,
        dtype=args.dtype,
        device=args.device,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        quantization=args.quantization,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        gpu_memory_utilization=args.gpu_memory_utilization,
        mm_cache_bytes=args.mm_cache_bytes,
        enable_prefix_caching=args.enable_prefix_caching,
        enable_chunked_prefill=args.enable_chunked_prefill,
    )
    server_config = ServerConfig(
        host=args.host,
        port=args.port,
        served_model_name=name,
        api_key=args.api_key,
        admin_api_key=args.admin_api_key,
        api_keys_file=args.api_keys_file,
        max_request_body_bytes=args.max_request_body_bytes,
        max_waiting=args.max_waiting,
        cpu_threads=args.cpu_threads,
        engine_process=args.engine_process,
        registry_path=args.registry,
        registry=registry_config(args),
        data_dir=args.data_dir,
        **operations_config(args),
    )
    _check_registration(engine_config, server_config, name)
    return engine_config, server_config, media_config(args)


def _check_registration(engine_config: EngineConfig, server_config: Any, name: str | None) -> None:
    """The command line's model is registered like any other (`startup_spec`): its refusals
    name the flags typed, not the registry's fields (`alias` is --served-model-name)."""
    from vlmserve.api.server import startup_spec
    from vlmserve.registry import SpecError

    try:
        startup_spec(engine_config, server_config)
    except SpecError as exc:
        flags = {
            "alias": "--served-model-name" if name else "MODEL",
            "model_name": "MODEL",
            "max_model_len": "--max-model-len",
            "chat_template": "--chat-template",
            "tokenizer": "--tokenizer",
        }
        raise ValueError(f"{flags.get(exc.field, exc.field)}: {exc.reason}") from None


def registry_config(args: argparse.Namespace) -> RegistryConfig:
    return RegistryConfig(
        load_timeout=args.load_timeout,
        max_waiting=args.max_waiting,
        keep_alive=args.keep_alive,
        max_loaded_models=args.max_loaded_models,
        memory_budget_bytes=args.memory_budget_bytes,
        min_resident=args.min_resident,
        drain_timeout=args.drain_timeout,
        liveness_timeout=args.liveness_timeout,
    )
