"""`vlmserve serve`: its flags (vLLM's names where vLLM has them) and its start."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path
from typing import Any

from vlmserve.cli.cluster import add_ray_flags, run_on_ray
from vlmserve.cli.config_env import render_config
from vlmserve.cli.configs import build_configs, fetch_timeout
from vlmserve.cli.help import CommaList, byte_size, duration, json_object, keep_alive
from vlmserve.cli.logs import configure_logging
from vlmserve.cli.ops_flags import add_operations_flags
from vlmserve.cli.tiny import TINY_ARCH, default_tiny_model
from vlmserve.config import QUANTIZATIONS, MediaConfig, MediaFetchTimeout, RegistryConfig
from vlmserve.safety import cli as safety_cli

SERVE_DESCRIPTION = """\
Serve MODEL over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions,
/v1/models), with images and videos in chat messages and JSON-schema outputs that always
validate. Without MODEL a tiny random-weight model is generated once and served: enough
to try every endpoint, not to get meaningful answers.

The start-up log says what was chosen (device, dtype, KV cache, context length, security
settings); GET /ready answers 200 once the model is loaded and warmed up. Every flag can
also be set in a YAML or TOML file (--config) with the same names, or in the environment as
VLMSERVE_ plus the flag's name (VLMSERVE_MAX_MODEL_LEN=4096); the command line wins over the
environment, which wins over the file. --print-config shows the result."""

SERVE_EPILOG = """\
examples:
  vlmserve serve
  vlmserve serve /models/Qwen2-VL-2B-Instruct --served-model-name qwen2-vl --api-key s3cret
  vlmserve serve /models/X --allowed-media-domains img.example.com,'*.cdn.example.com'
  vlmserve serve --allow-private-media-addresses --allowed-media-ports 8080   # a local test media server

docs: README.md, docs/quickstart.md, docs/api.md (endpoints, errors), docs/media.md (media
policy), docs/engine.md (KV cache, scheduling)"""


def add_serve_parser(sub: Any, common: argparse.ArgumentParser, formatter: Any) -> None:
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the OpenAI-compatible HTTP server",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=formatter,
    )
    serve.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="a model folder (Hugging Face layout) or a hub id such as Qwen/Qwen2-VL-2B-Instruct "
        "(default: a tiny random model, generated on first use)",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or TOML file with the same keys as these flags; flags given here and "
        "VLMSERVE_* variables win (default: $VLMSERVE_CONFIG, else none)",
    )
    serve.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings (flags, environment, config file, defaults) as a "
        "config file, API keys hidden, and exit",
    )
    _server_flags(serve)
    _model_flags(serve.add_argument_group("models: registry and lifecycle (docs/registry.md)"))
    add_operations_flags(serve.add_argument_group("operations (docs/deploy.md)"))
    _engine_flags(serve.add_argument_group("engine (docs/engine.md)"))
    _media_flags(serve.add_argument_group("media fetching and decoding (docs/media.md)"))
    safety_cli.add_serve_flags(serve)
    add_ray_flags(serve.add_argument_group("Ray Serve: several machines (docs/ray.md)"))
    serve.set_defaults(func=run_serve)


def _server_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the name clients put in 'model' (default: MODEL as given; tiny-qwen2_vl for "
        "the tiny model)",
    )
    serve.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (default: none, open)",
    )
    serve.add_argument(
        "--admin-api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /metrics, and allow model "
        "administration with it (default: none: /metrics open, administration off)",
    )
    serve.add_argument(
        "--api-keys-file",
        metavar="FILE",
        help="YAML or JSON mapping keys to tenants and their limits, re-read when it "
        "changes (docs/security.md; default: none)",
    )
    serve.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template file (default: the tokenizer's)",
    )
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        help="durable state: the model registry (registry.db, unless --registry) and stored "
        "responses (/v1/responses with store) (default: $VLMSERVE_DATA_DIR, else "
        "$XDG_DATA_HOME/vlmserve, else ~/.local/share/vlmserve)",
    )
    serve.add_argument(
        "--max-request-body-bytes",
        type=byte_size,
        default="32MiB",
        metavar="BYTES",
        help="larger request bodies get 413",
    )
    serve.add_argument(
        "--max-waiting",
        type=int,
        metavar="N",
        default=1024,
        help="per model: requests in flight before new ones get 429, and requests waiting "
        "for its load before new ones get 503",
    )
    serve.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of requests that give none"
    )


def _model_flags(models: Any) -> None:
    defaults = RegistryConfig()
    models.add_argument(
        "--registry",
        metavar="FILE",
        help="SQLite file of the registered models (default: registry.db in --data-dir)",
    )
    models.add_argument(
        "--keep-alive",
        type=keep_alive,
        metavar="DURATION",
        default="5m",
        help="how long an idle model stays loaded unless its registration or a request says "
        "otherwise: seconds or 30s/5m/1h; 0 unloads after the last request, -1 never",
    )
    models.add_argument(
        "--load-timeout",
        type=duration,
        metavar="DURATION",
        default=f"{defaults.load_timeout:g}s",
        help="longest a request waits for its model to load before a 503 with Retry-After",
    )
    models.add_argument(
        "--max-loaded-models",
        type=int,
        metavar="N",
        help="models loaded at once; loading another evicts one (default: no limit)",
    )
    models.add_argument(
        "--memory-budget",
        dest="memory_budget_bytes",
        type=byte_size,
        metavar="BYTES",
        help="measured footprints of the loaded models, e.g. 24GiB; loading past it evicts "
        "(default: no limit)",
    )
    models.add_argument(
        "--min-resident",
        type=duration,
        metavar="DURATION",
        default="0s",
        help="a model loaded more recently than this is not evicted",
    )
    models.add_argument(
        "--drain-timeout",
        type=duration,
        metavar="DURATION",
        default=f"{defaults.drain_timeout:g}s",
        help="longest an unload waits for requests in flight (an eviction then gives up)",
    )
    models.add_argument(
        "--liveness-timeout",
        type=duration,
        metavar="DURATION",
        default=f"{defaults.liveness_timeout:g}s",
        help="GET /health fails when the lifecycle loop or an engine loop made no progress "
        "for this long",
    )


def _engine_flags(engine: Any) -> None:
    engine.add_argument(
        "--tokenizer", metavar="FOLDER", help="tokenizer folder (default: the model's)"
    )
    engine.add_argument(
        "--load-format",
        choices=["auto", "dummy"],
        default="auto",
        help="auto: the safetensors weights; dummy: random weights from config.json alone "
        "(benchmarks of shapes whose weights are not at hand)",
    )
    engine.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="auto: the checkpoint's dtype on CUDA and on CPUs with native bf16, else float32",
    )
    engine.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="none",
        help="int8: the decoder's linear layers in int8, weights per channel and activations "
        "per token (CPUs with AVX-512 VNNI, AVX-VNNI or AMX only; faster decode, slightly "
        "different outputs; docs/engine.md)",
    )
    engine.add_argument(
        "--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N"
    )
    engine.add_argument(
        "--cpu-threads",
        type=int,
        metavar="N",
        default=max(1, (os.cpu_count() or 1) - 1),
        help="torch threads on CPU; the default is one per core but one, left to the server",
    )
    engine.add_argument(
        "--max-model-len",
        type=int,
        metavar="TOKENS",
        help="longest prompt + output in tokens (default: the model's limit, at most 32768, "
        "lowered to the KV cache's capacity if that is smaller)",
    )
    engine.add_argument(
        "--max-num-seqs",
        type=int,
        default=32,
        metavar="N",
        help="sequences generated at once (batch size)",
    )
    engine.add_argument(
        "--max-num-batched-tokens",
        type=int,
        metavar="TOKENS",
        default=2048,
        help="tokens computed per step (prompt chunks and decodes)",
    )
    engine.add_argument(
        "--limit-mm-per-prompt",
        type=json_object,
        metavar="JSON",
        default={},
        help="most media items per prompt, as JSON, e.g. '{\"image\": 4}'; modalities left out "
        "keep theirs (image 16, video 2)",
    )
    engine.add_argument(
        "--gpu-memory-utilization",
        type=float,
        metavar="FRACTION",
        default=0.9,
        help="CUDA: share of the GPU's memory this server may fill (weights, activations, "
        "KV cache)",
    )
    engine.add_argument(
        "--kv-cache-memory-bytes",
        type=byte_size,
        metavar="BYTES",
        help="KV-cache size, e.g. 4GiB (default: from the memory available; see docs/engine.md)",
    )
    engine.add_argument(
        "--block-size", type=int, default=16, metavar="TOKENS", help="tokens per KV-cache block"
    )
    engine.add_argument(
        "--mm-cache-bytes",
        type=byte_size,
        default="256MiB",
        metavar="BYTES",
        help="vision-embedding cache (reuse of images and videos by UUID or content)",
    )
    engine.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse the KV cache of shared prompt prefixes",
    )
    engine.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run each model's engine in a process of its own, so HTTP work (parsing, media "
        "decoding, tokenizing, streaming) never waits on the engine's GIL; see docs/engine.md",
    )
    engine.add_argument(
        "--enable-chunked-prefill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="split long prompts over steps, sharing each step with decodes",
    )


def _media_flags(media: Any) -> None:
    defaults = MediaConfig()
    media.add_argument(
        "--allowed-media-domains",
        action=CommaList,
        default=[],
        help="fetch http(s) media only from these hosts (exact names or '*.suffix', "
        "comma-separated or repeated); none: any public host",
    )
    media.add_argument(
        "--allow-private-media-addresses",
        action="store_true",
        default=False,
        help="also fetch from loopback, private and link-local addresses (trusted networks "
        "and tests only)",
    )
    media.add_argument(
        "--allowed-media-ports",
        action=CommaList,
        item=int,
        default=list(defaults.allowed_media_ports),
        help="ports media URLs may use; comma-separated or repeated",
    )
    media.add_argument(
        "--media-max-redirects",
        type=int,
        metavar="N",
        default=defaults.media_max_redirects,
        help="redirect hops to follow, each checked like the first URL (0: a 3xx is refused)",
    )
    media.add_argument(
        "--media-fetch-timeout",
        type=fetch_timeout,
        default=MediaFetchTimeout(),
        metavar="SECONDS",
        help="CONNECT,READ,TOTAL seconds for one fetch, or one number: the total",
    )
    media.add_argument(
        "--allowed-local-media-path",
        metavar="DIR",
        help="folder that file:// media URLs may read from (default: none, file: URLs off)",
    )
    for flag, kind, default, what in (
        ("--media-max-bytes-per-item", byte_size, "20MiB", "bytes of one media item (413 above)"),
        ("--media-max-bytes-per-request", byte_size, "64MiB", "media bytes of one request"),
        ("--media-max-data-url-size", byte_size, "8Mi", "characters of one data: URL"),
        ("--media-max-concurrent-fetches", int, defaults.max_concurrent_fetches,
         "URL fetches in flight, server-wide"),
        ("--media-max-fetches-per-request", int, defaults.max_fetches_per_request,
         "URL fetches in flight for one request"),
    ):  # fmt: skip
        metavar = "N" if kind is int else "CHARS" if "url" in flag else "BYTES"
        media.add_argument(flag, type=kind, default=default, metavar=metavar, help=f"most {what}")
    media.add_argument(
        "--media-io-kwargs",
        type=json_object,
        metavar="JSON",
        default={},
        help='decoding options as JSON: {"image": {"max_pixels": int, "rgba_background_color": '
        '[r, g, b], "formats": ["PNG", ...]}, "video": {"fps": float, "num_frames": int, '
        '"max_decoded_frames": int, "decode_timeout": seconds}}',
    )


def run_serve(args: argparse.Namespace) -> int:
    if args.print_config:
        print(render_config(args), end="")
        return 0
    configure_logging(args.log_level, args.log_format)
    from vlmserve.api.server import run_server

    model, name = args.model, args.served_model_name
    if model is None:
        model = str(default_tiny_model())
        name = name or f"tiny-{TINY_ARCH}"
    template = None
    if args.chat_template:
        try:
            template = Path(args.chat_template).read_text()
        except OSError as exc:
            raise ValueError(f"--chat-template {args.chat_template}: {exc.strerror}") from None
    configs = build_configs(args, model, name, template)
    if args.ray:
        return run_on_ray(args, *configs)
    run_server(
        *configs,
        extra_routers=safety_cli.serve_routers(args),
        # What each engine process (--engine-process) runs first: this process's logging.
        process_setup=functools.partial(configure_logging, args.log_level, args.log_format),
    )
    return 0
