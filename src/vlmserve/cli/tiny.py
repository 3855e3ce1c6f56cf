"""`vlmserve make-tiny-model`, and the default model of `vlmserve serve`."""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Final

from vlmserve.cli.logs import configure_logging

TINY_ARCH: Final = "qwen2_vl"
logger = logging.getLogger(__name__)


def add_tiny_parser(sub: Any, common: argparse.ArgumentParser, formatter: Any) -> None:
    tiny = sub.add_parser(
        "make-tiny-model",
        parents=[common],
        help="write a random-weight checkpoint in Hugging Face format",
        description="Write a random-weight Qwen2-VL / Qwen2.5-VL checkpoint (config, "
        "safetensors, tokenizer, chat template, preprocessor config) that transformers, "
        "vLLM and vlmserve load: for tests and benchmarks without a model hub. Prints the "
        "folder.",
        formatter_class=formatter,
    )
    tiny.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if needed)")
    tiny.add_argument(
        "--arch", choices=["qwen2_vl", "qwen2_5_vl"], default="qwen2_vl", help="architecture"
    )
    tiny.add_argument(
        "--preset",
        choices=["tiny", "small", "7b"],
        default="tiny",
        help="tiny: ~2 M parameters (tests); small: ~96 M (benchmarks); 7b: the real 7B "
        "shapes without weights (serve it with --load-format dummy)",
    )
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.add_argument(
        "--tokenizer-size",
        type=int,
        help="learned BPE tokens before the special tokens (default: 5000, ~1 s to train; "
        "Qwen2-VL's 151643 takes ~40 s)",
    )
    tiny.add_argument(
        "--vocab-size",
        type=int,
        help="embedding rows / logits width (default: the tokenizer padded to a multiple of "
        "64; Qwen2-VL: 152064)",
    )
    tiny.set_defaults(func=run_make_tiny_model)


def run_make_tiny_model(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
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


def default_tiny_model() -> Path:
    """The tiny random model in the cache folder, generated on first use (no network)."""
    from vlmserve.config import cache_dir
    from vlmserve.models.tiny import make_tiny_model

    target = cache_dir() / f"tiny-{TINY_ARCH}"
    if (target / "config.json").is_file():
        return target
    logger.info("first run: generating the default tiny model into %s", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place, so an interrupted run never leaves half a model.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(make_tiny_model(Path(tmp) / "model", arch=TINY_ARCH))
        if not (target / "config.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
            built.rename(target)
    return target
