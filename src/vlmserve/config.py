"""Frozen configuration objects, one per layer. The CLI and the offline API build them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LIMIT_MM_PER_PROMPT = {"image": 16, "video": 2}


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
    num_kv_blocks: int | None = None  # None: derived from kv_cache_memory_bytes
    # None: sized from the memory available (engine/kv_sizing.py, docs/engine.md).
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.9  # CUDA: share of the device this engine may fill
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    mm_cache_bytes: int = 256 * 1024 * 1024  # vision-embedding cache (LRU by bytes)
    # Items per prompt by modality; a modality left out keeps its default (as in vLLM).
    limit_mm_per_prompt: dict[str, int] = field(default_factory=dict)

    @property
    def mm_limits(self) -> dict[str, int]:
        return {**DEFAULT_LIMIT_MM_PER_PROMPT, **self.limit_mm_per_prompt}

    chat_template: str | None = None  # a Jinja template overriding the tokenizer's
    # Structured outputs (docs/structured.md): a constraint whose grammar takes longer to
    # compile is refused (None: no deadline); compiles run on their own threads, at most
    # max_pending_grammar_compiles queued or running (more are refused with a 429).
    grammar_compile_timeout: float | None = 5.0
    grammar_compile_workers: int = 2
    max_pending_grammar_compiles: int = 8


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


def cache_dir() -> Path:
    """Where generated artefacts (the default tiny model) live: $VLMSERVE_CACHE or
    ~/.cache/vlmserve."""
    root = os.environ.get("VLMSERVE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "vlmserve"
