"""Command line: the only place flags are parsed. `vlmserve --help` lists the commands."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from vlmserve.safety import cli as safety_cli

TINY_ARCH: Final = "qwen2_vl"


def _make_tiny_model(args: argparse.Namespace) -> int:
    from vlmserve.models.tiny import make_tiny_model

    # The generator owns the default tokenizer size: pass it only when given.
    sizes = {"tokenizer_size": args.tokenizer_size} if args.tokenizer_size else {}
    path = make_tiny_model(
        args.out_dir,
        arch=args.arch,
        preset=args.preset,
        seed=args.seed,
        vocab_size=args.vocab_size,
        **sizes,
    )
    print(path)
    return 0


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def default_tiny_model() -> Path:
    """The tiny random model in the cache folder, generated on first use (no network)."""
    from vlmserve.config import cache_dir
    from vlmserve.models.tiny import make_tiny_model

    target = cache_dir() / f"tiny-{TINY_ARCH}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place, so an interrupted run never leaves half a model.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(make_tiny_model(Path(tmp) / "model", arch=TINY_ARCH))
        if not (target / "config.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
            built.rename(target)
    return target


def _serve_parser(sub: Any) -> argparse.ArgumentParser:
    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    serve.add_argument(
        "model", nargs="?", default=None, help="model folder or hub id (default: a tiny model)"
    )
    serve.add_argument("--config", help="YAML or TOML file with the same keys as these flags")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", help="the name clients use (default: MODEL)")
    serve.add_argument("--max-model-len", type=int)
    serve.add_argument("--max-num-seqs", type=int, default=32)
    serve.add_argument(
        "--limit-mm-per-prompt",
        type=_json_object,
        default={},
        help="JSON, e.g. '{\"image\": 4}'; unnamed modalities keep their defaults",
    )
    serve.add_argument("--api-key", help="required as 'Authorization: Bearer' on /v1/*")
    serve.add_argument("--admin-api-key", help="required on /metrics")
    serve.add_argument("--chat-template", help="file with a Jinja chat template")
    serve.add_argument("--max-request-body-bytes", type=int, default=32 * 1024 * 1024)
    serve.add_argument("--max-waiting", type=int, default=1024, help="in flight before 429")
    serve.add_argument("--seed", type=int, default=0)
    engine = serve.add_argument_group("engine (see docs/engine.md)")
    engine.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    engine.add_argument("--load-format", choices=["auto", "dummy"], default="auto")
    engine.add_argument(
        "--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto"
    )
    engine.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    engine.add_argument(
        "--cpu-threads",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="torch threads on CPU (default: one per core but one, left to the event loop)",
    )
    engine.add_argument("--max-num-batched-tokens", type=int, default=2048)
    engine.add_argument("--block-size", type=int, default=16)
    engine.add_argument(
        "--kv-cache-memory-bytes", type=int, help="KV-cache size (default: sized to the load)"
    )
    engine.add_argument("--mm-cache-bytes", type=int, default=256 * 1024 * 1024)
    engine.add_argument(
        "--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True
    )
    engine.add_argument(
        "--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True
    )
    media = serve.add_argument_group("media fetching (see docs/media.md)")
    media.add_argument("--allowed-media-domains", nargs="*", default=[], help="hosts or *.suffix")
    media.add_argument("--allow-private-media-addresses", action="store_true", default=False)
    media.add_argument("--allowed-media-ports", nargs="*", type=int, default=[80, 443])
    media.add_argument("--media-max-redirects", type=int, default=0)
    media.add_argument(
        "--media-fetch-timeout", type=float, default=30.0, help="seconds for one fetch in all"
    )
    media.add_argument("--allowed-local-media-path", help="folder file: URLs may read from")
    media.add_argument(
        "--media-io-kwargs",
        type=_json_object,
        default={},
        help='JSON, e.g. \'{"video": {"fps": 2, "num_frames": 32}}\'',
    )
    serve.set_defaults(func=_serve)
    return serve


def _file_scalar(action: argparse.Action, key: str, value: Any) -> Any:
    if isinstance(value, str) and callable(action.type):
        try:  # the same parsing as on the command line
            return action.type(value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ValueError(f"config key {key!r}: {exc}") from exc
    if action.type is _json_object:
        expected: type = dict
    elif isinstance(action.type, type):
        expected = action.type
    elif action.default is not None and not isinstance(action.default, list):
        expected = type(action.default)
    else:
        expected = str
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise ValueError(f"config key {key!r} must be {expected.__name__}, got {value!r}")
    return value


def _file_value(action: argparse.Action, key: str, value: Any) -> Any:
    """A config-file value checked like the flag's value would be."""
    if action.nargs in ("*", "+"):
        if not isinstance(value, list):
            raise ValueError(f"config key {key!r} must be a list, got {value!r}")
        return [_file_scalar(action, key, item) for item in value]
    return _file_scalar(action, key, value)


def _apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    from vlmserve.api.server_config import load_config_file

    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = load_config_file(path)
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"unknown keys in {path}: {unknown}; known: {sorted(actions)}")
    # Flags given on the command line still win: the file only replaces the defaults.
    parser.set_defaults(**{k: _file_value(actions[k], k, v) for k, v in values.items()})


def _media_config(args: argparse.Namespace) -> Any:
    from vlmserve.config import MediaConfig, MediaFetchTimeout

    video_kwargs: dict[str, Any] = {}
    for modality, kwargs in args.media_io_kwargs.items():
        known = {"video": {"fps": "video_fps", "num_frames": "video_max_frames"}}.get(modality)
        if known is None or not isinstance(kwargs, dict) or set(kwargs) - set(known):
            raise ValueError(
                f"--media-io-kwargs: unsupported entry {modality!r}: {kwargs!r}; supported: "
                '{"video": {"fps": float, "num_frames": int}}'
            )
        video_kwargs.update({known[k]: v for k, v in kwargs.items()})
    timeout = args.media_fetch_timeout
    return MediaConfig(
        allowed_media_domains=tuple(args.allowed_media_domains),
        allow_private_media_addresses=args.allow_private_media_addresses,
        allowed_media_ports=tuple(args.allowed_media_ports),
        media_max_redirects=args.media_max_redirects,
        # One number bounds the whole fetch; connect and read may not exceed it.
        media_fetch_timeout=MediaFetchTimeout(
            connect=min(MediaFetchTimeout.connect, timeout),
            read=min(MediaFetchTimeout.read, timeout),
            total=timeout,
        ),
        allowed_local_media_path=args.allowed_local_media_path,
        **video_kwargs,
    )


def _serve(args: argparse.Namespace) -> int:
    from vlmserve.api.server import run_server

    model = args.model
    name = args.served_model_name
    if model is None:
        model = str(default_tiny_model())
        name = name or f"tiny-{TINY_ARCH}"
    try:
        template = Path(args.chat_template).read_text() if args.chat_template else None
        configs = _configs(args, model, name, template)
    except (OSError, ValueError) as exc:
        print(f"vlmserve serve: error: {exc}", file=sys.stderr)
        return 2
    run_server(*configs)
    return 0


def _configs(
    args: argparse.Namespace, model: str, name: str | None, template: str | None
) -> tuple[Any, Any, Any]:
    from vlmserve.api.server_config import ServerConfig
    from vlmserve.config import EngineConfig

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
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
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
        max_request_body_bytes=args.max_request_body_bytes,
        max_waiting=args.max_waiting,
        cpu_threads=args.cpu_threads,
    )
    return engine_config, server_config, _media_config(args)


def build_parser() -> argparse.ArgumentParser:
    return _parsers()[0]


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser and its `serve` subparser (where config files apply)."""
    parser = argparse.ArgumentParser(prog="vlmserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser(
        "make-tiny-model", help="write a random-weight checkpoint in Hugging Face format"
    )
    tiny.add_argument("out_dir")
    tiny.add_argument("--arch", choices=["qwen2_vl", "qwen2_5_vl"], default="qwen2_vl")
    tiny.add_argument("--preset", choices=["tiny", "small", "7b"], default="tiny")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--tokenizer-size",
        type=int,
        help="learned BPE tokens before the special tokens (default 5000; Qwen2-VL: 151643, "
        "~20 s to train)",
    )
    tiny.add_argument(
        "--vocab-size",
        type=int,
        help="embedding rows / logits width (default: tokenizer padded to 64; Qwen2-VL: 152064)",
    )
    tiny.set_defaults(func=_make_tiny_model)
    serve = _serve_parser(sub)
    safety_cli.add_parsers(sub)
    return parser, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser, serve = _parsers()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        try:
            _apply_config_file(serve, args.config)
        except (OSError, ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(str(exc))
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
