"""The safety app's commands, registered on vlmserve's command line by `add_parsers`:
`bench`, `eval`, `classify` and `make-safety-set`. Heavy imports wait until a command runs,
so `vlmserve --help` stays fast."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2, got {text}")
    return value


def _levels(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(part) for part in text.split(",") if part.strip())


def _server_flags(parser: argparse.ArgumentParser) -> None:
    """`bench`'s: it always talks to a server."""
    parser.add_argument(
        "--base-url", required=True, help="the server, e.g. http://127.0.0.1:8000/v1"
    )
    parser.add_argument("--model", required=True, help="model name to send")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer'")
    parser.add_argument("--policy", help="policy file (YAML or JSON; default: the built-in)")
    parser.add_argument("--max-tokens", type=_positive_int, default=256)
    parser.add_argument(
        "--timeout", type=_positive_float, default=300.0, help="seconds per request"
    )


def _backend_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the commands that run on an engine in this process or on a server."""
    parser.add_argument(
        "--base-url",
        help="a server, e.g. http://127.0.0.1:8000/v1 (default: none; an engine runs in "
        "this process)",
    )
    parser.add_argument(
        "--api",
        choices=("moderations", "chat"),
        default="moderations",
        help="with --base-url: a vlmserve server's /v1/moderations (answers with class "
        "scores; it must serve the same policy) or any server's /v1/chat/completions",
    )
    parser.add_argument(
        "--model",
        help="in this process: the model folder or hub id to load (default: the tiny "
        "model); with --base-url: the model name to send (default: the first listed)",
    )
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer'")
    parser.add_argument("--policy", help="policy file (YAML or JSON; default: the built-in)")
    parser.add_argument("--max-tokens", type=_positive_int, default=256)
    parser.add_argument(
        "--timeout", type=_positive_float, default=300.0, help="seconds per request"
    )


def _backend_settings(args: argparse.Namespace, temperature: float = 0.0) -> Any:
    from vlmserve.safety.backends import BackendSettings

    return BackendSettings(
        base_url=args.base_url,
        api=args.api,
        model=args.model,
        api_key=args.api_key,
        timeout=args.timeout,
        connections=args.concurrency,
        max_tokens=args.max_tokens,
        temperature=temperature,
    )


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    """`vlmserve serve`'s flags for the /v1/moderations route the safety app adds."""
    group = serve.add_argument_group("content safety: POST /v1/moderations (docs/safety.md)")
    group.add_argument(
        "--moderation-policy",
        metavar="FILE",
        help="policy file, YAML or JSON (default: the built-in content-safety policy)",
    )
    group.add_argument(
        "--moderation-max-images",
        type=_positive_int,
        default=1,
        metavar="N",
        help="images one moderation input may carry; more get 400 too_many_images",
    )


def serve_routers(args: argparse.Namespace) -> list[Any]:
    """The routes `vlmserve serve` mounts for the safety app (ValueError on a bad policy)."""
    from vlmserve.safety.moderations import moderation_router
    from vlmserve.safety.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.moderation_policy)
    except PolicyError as exc:
        raise ValueError(f"--moderation-policy: {exc}") from None
    return [moderation_router(policy, args.moderation_max_images)]


def add_parsers(sub: Any, default_model: Callable[[], Path]) -> None:
    """Add the safety commands to vlmserve's subcommand parsers. `default_model` gives the
    folder of the model `classify` and `eval` load in this process when no --model is given
    (the command line owns that choice)."""
    bench = sub.add_parser(
        "bench", help="stress an OpenAI-compatible server and check that every answer is valid"
    )
    _server_flags(bench)
    bench.add_argument("--out", default="bench-out", help="folder for the report")
    bench.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --base-url"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--temperature", type=_temperature, default=0.0)
    bench.add_argument(
        "--small-max-tokens",
        type=_positive_int,
        default=64,
        help="max_tokens of the long-explanation-under-a-small-budget case",
    )
    bench.add_argument("--stream", action="store_true", help="stream answers and measure TTFT")
    bench.add_argument(
        "--concurrency",
        type=_levels,
        default=(1, 4, 8, 16, 32),
        help="levels of the concurrency sweep, comma-separated",
    )
    bench.add_argument("--requests-per-level", type=_positive_int, default=20)
    bench.add_argument(
        "--sweep-unconstrained",
        action="store_true",
        help="sweep the unconstrained mode too (default: constrained only)",
    )
    bench.add_argument("--burst", type=_positive_int, default=50, help="requests in the burst")
    bench.add_argument("--burst-concurrency", type=_positive_int, default=8)
    bench.add_argument(
        "--slo-ms", type=_positive_float, default=2000.0, help="latency bound of the valid goodput"
    )
    bench.set_defaults(func=_bench)

    evaluate = sub.add_parser("eval", help="accuracy and calibration of a server on a labelled set")
    evaluate.add_argument("--dataset", required=True, help="labels.jsonl: image + label per line")
    _backend_flags(evaluate)
    evaluate.add_argument("--out", default="eval-out", help="folder for the report")
    evaluate.add_argument("--trials", type=_positive_int, default=1, help="answers per item")
    evaluate.add_argument("--temperature", type=_temperature, default=0.0)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--concurrency", type=_positive_int, default=4)
    evaluate.add_argument("--vs", metavar="BASELINE", help="an earlier run's eval.json")
    evaluate.add_argument(
        "--fit-temperature",
        metavar="POLICY_OUT",
        help="fit a score temperature and write a policy copy with it here",
    )
    evaluate.set_defaults(func=_eval, default_model=default_model)

    classify = sub.add_parser("classify", help="classify image files, folders and URLs")
    classify.add_argument("inputs", nargs="+", metavar="PATH|URL|DIR")
    _backend_flags(classify)
    classify.add_argument("--out", default="results.jsonl", help="results file (.jsonl or .csv)")
    classify.add_argument("--concurrency", type=_positive_int, default=4)
    classify.set_defaults(func=_classify, default_model=default_model)

    make_set = sub.add_parser("make-safety-set", help="write the generated labelled image set")
    make_set.add_argument("out_dir")
    make_set.add_argument("--seed", type=int, default=0)
    make_set.set_defaults(func=_make_set)


def _fail(command: str, message: str | Exception) -> int:
    if isinstance(message, OSError) and message.filename is not None:
        # One line, the file and the reason, without "[Errno 2]".
        message = f"{message.filename}: {message.strerror or message}"
    print(f"vlmserve {command}: error: {message}", file=sys.stderr)
    return 2


def _bench(args: argparse.Namespace) -> int:
    from vlmserve.safety.bench.command import run_bench
    from vlmserve.safety.bench.runner import MODES, BenchConfig
    from vlmserve.safety.client import is_loopback_url
    from vlmserve.safety.policy import PolicyError, load_policy

    if not args.allow_remote and not is_loopback_url(args.base_url):
        return _fail(
            "bench",
            f"--base-url {args.base_url} is not a loopback address; pass --allow-remote "
            "to load a remote server",
        )
    if not args.concurrency:
        return _fail("bench", "--concurrency needs at least one level")
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        return _fail("bench", str(exc))
    config = BenchConfig(
        model=args.model,
        max_tokens=args.max_tokens,
        small_max_tokens=args.small_max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        stream=args.stream,
        concurrency_levels=args.concurrency,
        requests_per_level=args.requests_per_level,
        sweep_modes=MODES if args.sweep_unconstrained else ("constrained",),
        burst_requests=args.burst,
        burst_concurrency=args.burst_concurrency,
        slo_ms=args.slo_ms,
    )
    try:
        return asyncio.run(
            run_bench(args.base_url, args.api_key, args.timeout, policy, config, Path(args.out))
        )
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail("bench", exc)


def _eval(args: argparse.Namespace) -> int:
    from vlmserve.safety.evaluation.command import run_eval
    from vlmserve.safety.evaluation.runner import EvalSettings
    from vlmserve.safety.policy import load_policy

    if not Path(args.dataset).is_file():
        return _fail(
            "eval",
            f"--dataset {args.dataset}: no such file (a labelled set, one JSON object per "
            "line: vlmserve make-safety-set writes one)",
        )
    settings = EvalSettings(
        model=args.model or "",  # filled in once the backend is open
        trials=args.trials,
        temperature=args.temperature,
        seed=args.seed,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
    )
    try:
        return asyncio.run(
            run_eval(
                Path(args.dataset),
                load_policy(args.policy),
                settings,
                _backend_settings(args, args.temperature),
                args.default_model,
                Path(args.out),
                args.vs,
                args.fit_temperature,
            )
        )
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail("eval", exc)


def _classify(args: argparse.Namespace) -> int:
    from vlmserve.safety.classify import run_classify
    from vlmserve.safety.policy import load_policy

    try:
        return asyncio.run(
            run_classify(
                args.inputs,
                load_policy(args.policy),
                args.out,
                _backend_settings(args),
                args.default_model,
            )
        )
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail("classify", exc)


def _make_set(args: argparse.Namespace) -> int:
    from vlmserve.safety.dataset import write_dataset

    print(write_dataset(args.out_dir, args.seed))
    return 0
