"""Frozen configuration objects, one per layer. The CLI and the offline API build them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LIMIT_MM_PER_PROMPT = {"image": 16, "video": 2}
MODALITIES = tuple(DEFAULT_LIMIT_MM_PER_PROMPT)  # the media a prompt may carry
# "int8": the decoder's linear layers in int8, weights and activations (CPU only;
# docs/engine.md, "Quantization").
QUANTIZATIONS = ("none", "int8")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs one model."""

    model: str  # local folder or hub id
    tokenizer: str | None = None  # defaults to the model folder
    load_format: str = "auto"  # "auto" (safetensors) or "dummy" (random weights from config)
    dtype: str = "auto"  # "auto": bfloat16 on CUDA, float32 on CPU; or float32/bfloat16/float16
    device: str = "auto"  # "auto": cuda if available, else cpu
    seed: int = 0
    max_model_len: int | None = None  # None: min(model's max positions, 32768)
    max_num_seqs: int = 32  # sequences running at once
    max_num_batched_tokens: int = 2048  # tokens per step (prefill chunks + decodes)
    block_size: int = 16
    quantization: str = "none"  # one of QUANTIZATIONS
    num_kv_blocks: int | None = None  # None: derived from kv_cache_memory_bytes
    # None: sized from the memory available (engine/kv_sizing.py, docs/engine.md).
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.9  # CUDA: share of the device this engine may fill
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    mm_cache_bytes: int = 256 * 1024 * 1024  # vision-embedding cache (LRU by bytes)
    # Items per prompt by modality; a modality left out keeps its default (as in vLLM).
    limit_mm_per_prompt: dict[str, int] = field(default_factory=dict)
    chat_template: str | None = None  # a Jinja template overriding the tokenizer's
    # Structured outputs (docs/structured.md): a constraint whose grammar takes longer to
    # compile is refused (None: no deadline); compiles run on their own threads, at most
    # max_pending_grammar_compiles queued or running (more are refused with a 429).
    grammar_compile_timeout: float | None = 5.0
    grammar_compile_workers: int = 2
    max_pending_grammar_compiles: int = 8

    @property
    def mm_limits(self) -> dict[str, int]:
        return {**DEFAULT_LIMIT_MM_PER_PROMPT, **self.limit_mm_per_prompt}

    def __post_init__(self) -> None:
        for modality, limit in self.limit_mm_per_prompt.items():
            if modality not in MODALITIES:
                known = ", ".join(MODALITIES)
                raise ValueError(
                    f"limit_mm_per_prompt: {modality!r} is not a modality (known: {known})"
                )
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(
                    f"limit_mm_per_prompt: {modality!r} must be a whole number >= 0, got {limit!r}"
                )


@dataclass(frozen=True)
class MediaFetchTimeout:
    """Seconds allowed for fetching one media URL (see docs/media.md)."""

    connect: float = 5.0  # TCP (+TLS) connect to one resolved address
    read: float = 10.0  # longest silence between two body chunks
    total: float = 30.0  # wall-clock deadline: DNS, redirects and slow-drip bodies included


@dataclass(frozen=True)
class MediaConfig:
    """How media URLs in requests are fetched and decoded. Safe by default: see docs/media.md."""

    # Exact hosts ("img.example.com") or suffix patterns ("*.example.com"); empty: any host.
    allowed_media_domains: tuple[str, ...] = ()
    # Lifts the block on loopback/private/link-local/metadata addresses (trusted networks only).
    allow_private_media_addresses: bool = False
    allowed_media_ports: tuple[int, ...] = (80, 443)
    media_max_redirects: int = 0  # 0: a 3xx answer is an error; N: follow N hops, each re-checked
    media_fetch_timeout: MediaFetchTimeout = field(default_factory=MediaFetchTimeout)
    max_bytes_per_item: int = 20 * 1024 * 1024
    max_bytes_per_request: int = 64 * 1024 * 1024
    max_concurrent_fetches: int = 16  # network fetches in flight per connector (server-wide)
    max_fetches_per_request: int = 4  # of those, at most this many for any one request
    allowed_local_media_path: str | None = None  # file: URLs are refused unless this is set
    max_data_url_size: int = 8 * 1024 * 1024  # characters of a data: URL, checked before decoding
    # Decompression-bomb guard, read from the image header before any pixel is decoded.
    max_image_pixels: int = 40_000_000
    allowed_image_formats: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
    rgba_background_color: tuple[int, int, int] = (255, 255, 255)
    video_fps: float = 2.0  # frames sampled per second of video
    video_max_frames: int = 32
    # Decoding work per video, which its bytes do not bound (static frames compress to
    # almost nothing): frames decoded to take the samples (sampled or skipped), and seconds.
    video_max_decoded_frames: int = 2048
    video_decode_timeout: float = 10.0

    def __post_init__(self) -> None:
        timeout = self.media_fetch_timeout
        checks: list[tuple[bool, str]] = [
            (
                all(
                    p.removeprefix("*.") and "*" not in p.removeprefix("*.")
                    for p in self.allowed_media_domains
                ),
                "allowed_media_domains entries must be a host or '*.suffix', "
                f"got {list(self.allowed_media_domains)}",
            ),
            (
                all(0 < p < 65536 for p in self.allowed_media_ports),
                f"allowed_media_ports must be in 1..65535, got {list(self.allowed_media_ports)}",
            ),
            (self.media_max_redirects >= 0, "media_max_redirects must be >= 0"),
            (
                min(timeout.connect, timeout.read, timeout.total) > 0,
                f"media_fetch_timeout values must be > 0, got {timeout}",
            ),
            (
                min(self.max_bytes_per_item, self.max_bytes_per_request, self.max_data_url_size)
                > 0,
                "media byte limits must be > 0",
            ),
            (self.max_concurrent_fetches >= 1, "max_concurrent_fetches must be >= 1"),
            (self.max_fetches_per_request >= 1, "max_fetches_per_request must be >= 1"),
            (self.max_image_pixels >= 1, "max_image_pixels must be >= 1"),
            (
                self.allowed_local_media_path is None
                or self.allowed_local_media_path.startswith("/"),
                "allowed_local_media_path must be an absolute path",
            ),
            (
                len(self.rgba_background_color) == 3
                and all(0 <= c <= 255 for c in self.rgba_background_color),
                "rgba_background_color must be 3 values in 0..255, "
                f"got {self.rgba_background_color}",
            ),
            (self.video_fps > 0, "video_fps must be > 0"),
            (self.video_max_frames >= 1, "video_max_frames must be >= 1"),
            (
                self.video_max_decoded_frames >= self.video_max_frames,
                "video_max_decoded_frames must be >= video_max_frames",
            ),
            (self.video_decode_timeout > 0, "video_decode_timeout must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class RegistryConfig:
    """How the model registry runs each model's lifecycle (docs/registry.md). Durations are
    seconds; a model's registration may set its own `keep_alive` and `max_waiting`."""

    load_timeout: float = 120.0  # longest a request waits for its model to load
    max_waiting: int = 1024  # per model: requests waiting for its load
    keep_alive: float = 300.0  # idle time before an unpinned model unloads; -1: never
    max_loaded_models: int | None = None  # None: no limit
    memory_budget_bytes: int | None = None  # measured footprints of loaded models; None: none
    min_resident: float = 0.0  # a model loaded more recently is not evicted
    drain_timeout: float = 30.0  # longest an unload waits for requests in flight
    failure_backoff: float = 10.0  # after a failed load, doubling per failure...
    failure_backoff_max: float = 300.0  # ...up to this
    liveness_timeout: float = 60.0  # /health fails after this long without progress
    tick: float = 0.5  # how often the lifecycle loop looks at idle and dead models

    def __post_init__(self) -> None:
        positive = ("load_timeout", "drain_timeout", "failure_backoff", "liveness_timeout", "tick")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.failure_backoff_max < self.failure_backoff:
            raise ValueError("failure_backoff_max must be >= failure_backoff")
        if self.min_resident < 0:
            raise ValueError(f"min_resident must be >= 0 seconds, got {self.min_resident}")
        if self.keep_alive < 0 and self.keep_alive != -1:
            raise ValueError(f"keep_alive must be >= 0 seconds or -1, got {self.keep_alive}")
        for name in ("max_waiting", "max_loaded_models", "memory_budget_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


def data_dir() -> Path:
    """Where durable state lives (the model registry; stored responses): $VLMSERVE_DATA_DIR,
    else $XDG_DATA_HOME/vlmserve, else ~/.local/share/vlmserve; `vlmserve serve --data-dir`
    overrides all three."""
    root = os.environ.get("VLMSERVE_DATA_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "vlmserve"


def admin_key_from_env() -> str | None:
    """The admin key clients such as `vlmserve models` send: $VLMSERVE_ADMIN_KEY (kept out
    of command lines, which other users of the machine can read)."""
    return os.environ.get("VLMSERVE_ADMIN_KEY") or None


def cache_dir() -> Path:
    """Where generated artefacts (the default tiny model) live: $VLMSERVE_CACHE or
    ~/.cache/vlmserve."""
    root = os.environ.get("VLMSERVE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "vlmserve"
