"""JSONSchemaBench coverage: per subset, how many schemas compile, which keywords reject the
rest, and whether every sampled output of a compiled schema validates.

Outputs come from the random-logit driver (adversarial logits, forced tokens, budget-aware
closing) at budgets from the shortest valid output upwards. Usage:

    .venv/bin/python benchmarks/jsonschemabench.py [--data DIR] [--limit N] [--samples K]
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import time

from shared_dir import shared_dir

from vlmserve.structured import StructuredBackend, StructuredOutputError
from vlmserve.structured.testing import (
    adversarial_logits,
    decode,
    stdlib_sources,
    train_byte_level_bpe,
    validate,
)
from vlmserve.types import StructuredOutputsParams

BUDGET_SLACK = (0, 16, 64)  # extra tokens over the shortest valid output, per sample


def _reason(error: StructuredOutputError) -> str:
    if error.keyword:
        return error.keyword
    if "budget-aware closing" in error.message:
        return "no completion found"
    return error.message.split(":", 2)[-1].strip()[:40]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=pathlib.Path, default=shared_dir() / "data" / "jsonschemabench"
    )
    parser.add_argument("--limit", type=int, default=None, help="schemas per subset")
    parser.add_argument("--samples", type=int, default=3, help="outputs per compiled schema")
    parser.add_argument("--seconds-per-schema", type=float, default=5.0)
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.error(
            f"--data {args.data}: no such folder. It holds JSONSchemaBench's schemas, one "
            "folder per subset of *.json files (github.com/guidance-ai/jsonschemabench, "
            "data/); the machines this was built on keep a copy in a shared/ folder next to the "
            "clone (shared/data/jsonschemabench)"
        )

    tokenizer = train_byte_level_bpe(4000, stdlib_sources(40))
    eos = [tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")]
    backend = StructuredBackend(tokenizer, tokenizer.get_vocab_size(), eos)
    logits = [
        adversarial_logits(tokenizer, backend.vocab_size, seed) for seed in range(args.samples)
    ]

    totals = collections.Counter()
    all_reasons: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    print(
        f"{'subset':<16} {'schemas':>7} {'compiled':>8} {'rejected':>8} {'outputs':>7} {'valid':>6}  top rejecting keywords"
    )
    for subset in sorted(p for p in args.data.iterdir() if p.is_dir()):
        files = sorted(subset.glob("*.json"))[: args.limit]
        row = collections.Counter(schemas=len(files))
        reasons: collections.Counter[str] = collections.Counter()
        for path in files:
            schema = json.loads(path.read_text())
            try:
                compiled = backend.compile(StructuredOutputsParams(json=schema))
            except StructuredOutputError as error:
                row["rejected"] += 1
                reasons[_reason(error)] += 1
                continue
            row["compiled"] += 1
            deadline = time.monotonic() + args.seconds_per_schema
            for sample in range(args.samples):
                if time.monotonic() > deadline:
                    break
                budget = compiled.min_output_tokens + BUDGET_SLACK[sample % len(BUDGET_SLACK)]
                tokens, _ = decode(
                    backend.new_request(compiled, budget),
                    logits[sample],
                    backend.vocab_size,
                    budget,
                )
                text = tokenizer.decode(
                    [t for t in tokens if t not in eos], skip_special_tokens=False
                )
                row["outputs"] += 1
                try:
                    validate(json.loads(text), schema)
                    row["valid"] += 1
                except Exception as error:
                    failures.append(
                        f"{subset.name}/{path.name}: {type(error).__name__}: {str(error)[:160]} :: {text[:160]!r}"
                    )
        top = ", ".join(f"{k} ({v})" for k, v in reasons.most_common(4))
        print(
            f"{subset.name:<16} {row['schemas']:>7} {row['compiled']:>8} {row['rejected']:>8} {row['outputs']:>7} {row['valid']:>6}  {top}"
        )
        totals.update(row)
        all_reasons.update(reasons)
    share = totals["compiled"] / max(totals["schemas"], 1)
    print(
        f"{'total':<16} {totals['schemas']:>7} {totals['compiled']:>8} {totals['rejected']:>8} {totals['outputs']:>7} {totals['valid']:>6}"
    )
    print(f"compiled {share:.1%}; outputs valid {totals['valid']}/{totals['outputs']}")
    print(
        "top rejecting keywords:", ", ".join(f"{k} ({v})" for k, v in all_reasons.most_common(10))
    )
    print(
        f"compile: {backend.stats.misses} schemas, {backend.stats.compile_seconds:.1f} s in total"
    )
    for failure in failures:
        print("INVALID", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
