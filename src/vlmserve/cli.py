"""Command line: the only place flags are parsed. `vlmserve --help` lists the commands."""

from __future__ import annotations

import argparse
import sys


def _make_tiny_model(args: argparse.Namespace) -> int:
    from vlmserve.models.tiny import make_tiny_model

    path = make_tiny_model(args.out_dir, arch=args.arch, preset=args.preset, seed=args.seed)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser(
        "make-tiny-model", help="write a random-weight checkpoint in Hugging Face format"
    )
    tiny.add_argument("out_dir")
    tiny.add_argument("--arch", choices=["qwen2_vl", "qwen2_5_vl"], default="qwen2_vl")
    tiny.add_argument("--preset", choices=["tiny", "small", "7b"], default="tiny")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_make_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
