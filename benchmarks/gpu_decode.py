"""Decode throughput on a GPU against its memory roofline and against transformers: the
Qwen2-VL-7B shapes with dummy weights (issue 13, "on a CUDA machine").

    .venv/bin/python benchmarks/gpu_decode.py [--batches 1,8,32,64] [--tokens 128]
        [--skip-transformers] [--json OUT]

Per batch size, unconstrained (ignore_eos) and constrained (a strict JSON schema), decode
tokens/s = tokens generated after the first / (time of the run - time of the same prompts
with max_tokens=1). The roofline is what memory allows: every decode step reads the
decoder's weights and LM head once plus every row's KV cache, so at most
batch x bandwidth / (weight bytes + KV bytes per step) tokens/s, with the bandwidth measured
here (a device-to-device copy: bytes read + written / time). transformers' `generate` runs
the same shapes at one batch size (`--transformers-batch`, default 32) for the ratio.
Goals (issue 13): >= 70 % of the roofline at batch 1, >= 2x transformers at batch 32.

`--device cpu --preset tiny --batches 1,2 --tokens 32` runs every step in seconds: a check
that the script works where no GPU is, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from vlmserve.models.tiny import make_tiny_model
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams, StructuredOutputsParams

REPO = Path(__file__).resolve().parent.parent
PROMPT_TOKENS = 64
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["safe", "unsafe"]},
        "reason": {"type": "string", "maxLength": 400},
    },
    "required": ["label", "reason"],
    "additionalProperties": False,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (read + write), best of 5."""
    size = (2 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * size / best


def decode_bytes(llm: LLM) -> tuple[int, int]:
    """(bytes a decode step reads from the weights, KV bytes per token of context)."""
    model = llm.engine.model
    weights = sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        # The vision tower is not run in decode; of the embedding table only a row per
        # sequence is read.
        if not name.startswith("visual") and "embed_tokens" not in name
    )
    c = model.config
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2  # bf16
    return weights, kv


def _prompts(batch: int, vocab: int) -> list[dict[str, list[int]]]:
    # Distinct first tokens: no prefix-cache hit between rows, every row its own KV.
    return [
        {
            "prompt_token_ids": [
                (17 * i + 11 * j) % (vocab - 1000) + 500 for j in range(PROMPT_TOKENS)
            ]
        }
        for i in range(batch)
    ]


def _timed(llm: LLM, prompts: list[Any], params: SamplingParams, device: torch.device):
    _sync(device)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    _sync(device)
    return time.perf_counter() - start, outputs


def bench_vlmserve(
    llm: LLM, batches: list[int], tokens: int, device: torch.device, bandwidth: float
) -> list[dict[str, Any]]:
    weights, kv_per_token = decode_bytes(llm)
    vocab = llm.engine.model.config.vocab_size
    rows = []
    first = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    modes = {
        "unconstrained": SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True),
        "constrained": SamplingParams(
            temperature=0.0,
            max_tokens=tokens,
            structured_outputs=StructuredOutputsParams(json=SCHEMA, strict=True),
        ),
    }
    for batch in batches:
        prompts = _prompts(batch, vocab)
        _timed(llm, prompts, modes["unconstrained"], device)  # warm-up: kernels, caches
        prefill, _ = _timed(llm, prompts, first, device)
        for mode, params in modes.items():
            seconds, outputs = _timed(llm, prompts, params, device)
            generated = sum(len(o.outputs[0].token_ids) - 1 for o in outputs)
            decode = max(seconds - prefill, 1e-9)
            steps = max(len(o.outputs[0].token_ids) for o in outputs) - 1
            mean_context = PROMPT_TOKENS + (steps + 1) / 2
            step_bytes = weights + batch * mean_context * kv_per_token
            roofline = batch * bandwidth / step_bytes
            rows.append(
                {
                    "batch": batch,
                    "mode": mode,
                    "tokens": generated,
                    "decode_s": decode,
                    "tok_s": generated / decode,
                    "roofline_tok_s": roofline,
                    "of_roofline": generated / decode / roofline,
                }
            )
            print(
                f"{batch:>5} {mode:>13} {generated:>7} {generated / decode:>10.1f} "
                f"{roofline:>13.1f} {generated / decode / roofline:>9.0%}",
                flush=True,
            )
    return rows


def bench_transformers(
    model_dir: Path, batch: int, tokens: int, device: torch.device
) -> float | None:
    """transformers' greedy `generate` decode tokens/s at `batch` (random weights)."""
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: skipped (the `dev` extra has it)")
        return None
    config = transformers.AutoConfig.from_pretrained(model_dir)
    architecture = getattr(transformers, config.architectures[0])
    with torch.device(device):
        model = architecture._from_config(config, dtype=torch.bfloat16).eval()
    vocab = config.text_config.vocab_size if hasattr(config, "text_config") else config.vocab_size
    ids = torch.tensor([p["prompt_token_ids"] for p in _prompts(batch, vocab)], device=device)

    def run(model: Any, new_tokens: int) -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
        _sync(device)
        return time.perf_counter() - start

    run(model, tokens)  # warm-up
    prefill = run(model, 1)
    decode = max(run(model, tokens) - prefill, 1e-9)
    del model
    return batch * (tokens - 1) / decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="7b", choices=["tiny", "small", "7b"])
    parser.add_argument("--arch", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument("--transformers-batch", type=int, default=32)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--models", type=Path, default=REPO / ".cache" / "bench", help="where the model is made"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: pass --device cpu --preset tiny for a dry run")
    batches = [int(b) for b in args.batches.split(",")]
    model_dir = args.models / f"{args.preset}-{args.arch}"
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, arch=args.arch, preset=args.preset)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    bandwidth = measure_bandwidth(device)
    print(f"device {device} ({name}); measured copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    llm = LLM(
        str(model_dir),
        load_format="dummy",
        dtype="bfloat16",
        device=args.device,
        max_num_seqs=max(batches),
        max_model_len=PROMPT_TOKENS + args.tokens + 64,
        max_num_batched_tokens=max(2048, max(batches) * PROMPT_TOKENS),
    )
    weights, kv = decode_bytes(llm)
    print(f"decode reads {weights / 1e9:.2f} GB of weights a step, {kv} bytes of KV per token")
    print(
        f"{'batch':>5} {'mode':>13} {'tokens':>7} {'tok/s':>10} {'roofline tok/s':>13} {'of roof':>9}"
    )
    rows = bench_vlmserve(llm, batches, args.tokens, device, bandwidth)
    llm.close()
    result: dict[str, Any] = {
        "device": name,
        "bandwidth_bytes_s": bandwidth,
        "weights_bytes": weights,
        "rows": rows,
    }
    if not args.skip_transformers:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        reference = bench_transformers(model_dir, args.transformers_batch, args.tokens, device)
        if reference is not None:
            ours = next(
                (r["tok_s"] for r in rows
                 if r["batch"] == args.transformers_batch and r["mode"] == "unconstrained"),
                None,
            )  # fmt: skip
            ratio = f", vlmserve {ours / reference:.2f}x" if ours else ""
            print(
                f"transformers generate, batch {args.transformers_batch}: {reference:.1f} tok/s{ratio}"
            )
            result["transformers_tok_s"] = reference
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
