"""Our C kernels on CPU: built from source on first use, cached, called through ctypes.

Four sources, one library (sharing `bf16.h`):
- `paged_attention.c`: causal attention of every new token (decodes, forced tokens, prompt
  chunks, whole prompts) that reads its sequence's keys and values where they lie in the
  paged cache, instead of gathering the blocks into a batch tensor for two `bmm`s (the
  gather and the matmuls were most of a `small` decode step at concurrency 32;
  docs/benchmarks.md), with the same arithmetic for a token whatever its path;
- `attention_avx2.c`: its items on CPUs with AVX2 but no AVX-512 BF16 (AMD EPYC before
  Zen 4 among them), where the portable loops are slow;
- `int8_rows.c`: the per-token quantize and finish steps of an int8 linear layer
  (models/quantize.py);
- `linear_avx2.c`: float32 linear layers whose rows keep their bits whatever the row count,
  where torch's GEMM does not keep them (models/rows.py).

The library is compiled with the machine's C compiler (`$CC`, else `cc`) for the CPU it runs
on (`-march=native`), into `<cache>/kernels/` under a name that hashes the sources and
headers, the flags, the compiler and the CPU, so a changed source, compiler or machine builds
afresh and concurrent builders never see a half-written file. Where no compiler works the
engine logs why once and keeps the torch paths (`attention.py`, `quantize.py`);
`VLMSERVE_NATIVE_KERNELS=0` chooses them on purpose.

ctypes releases the GIL during the call, so with several torch threads the (token, KV head)
items are split across a small pool of Python threads; with one (the server's default on
small machines) the calling thread does them all.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

from vlmserve.config import cache_dir

logger = logging.getLogger(__name__)
T = TypeVar("T")

SOURCES = tuple(
    Path(__file__).with_name(name)
    for name in ("paged_attention.c", "attention_avx2.c", "int8_rows.c", "linear_avx2.c", "norm.c")
)
# Included by the sources: part of the hash.
HEADERS = tuple(
    Path(__file__).with_name(name) for name in ("bf16.h", "attention_avx2.h", "kv_rows.h")
)
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC"]
if platform.machine() in ("x86_64", "AMD64"):
    # Compilers default to 256-bit vectors on x86 even where 512-bit ones exist: without
    # this the kernel's portable loops (the value sums among them) stay at half width.
    FLAGS.append("-mprefer-vector-width=512")
ENV_SWITCH = "VLMSERVE_NATIVE_KERNELS"
# A thread gets at least this many (token, KV head) items: fewer would not pay for the
# hand-off to the pool (a few microseconds).
MIN_ITEMS_PER_THREAD = 8
# A linear layer's call is split across threads only where each gets this many multiply-adds
# (~0.1 ms of one core's work at a few rows).
MIN_MACS_PER_THREAD = 1 << 21

_P = ctypes.c_void_p
_I = ctypes.c_int64
_ARGTYPES = [_P, _P, _P, _I, _I, _P, _P, _P, _I, _I, _I, _I, _I, ctypes.c_float, _I, _I, _I]


class Kernels:
    def __init__(self, library: ctypes.CDLL) -> None:
        self.library = library  # kept: the functions below live in it
        self.by_dtype = {}
        for dtype, name in (
            (torch.bfloat16, "paged_attention_bf16"),
            (torch.float32, "paged_attention_f32"),
        ):
            function = getattr(library, name)
            function.restype = ctypes.c_int
            function.argtypes = _ARGTYPES
            self.by_dtype[dtype] = function
        self.int8_rows: dict[torch.dtype, tuple[Callable[..., None], Callable[..., None]]] = {}
        for dtype, suffix in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
            quantize = getattr(library, f"int8_quantize_rows_{suffix}")
            quantize.restype, quantize.argtypes = None, [_P, _I, _I, _P, _P]
            finish = getattr(library, f"int8_finish_rows_{suffix}")
            finish.restype, finish.argtypes = None, [_P, _I, _I, _P, _P, _P]
            self.int8_rows[dtype] = (quantize, finish)
        self.linear = library.invariant_linear
        self.linear.restype = ctypes.c_int
        self.linear.argtypes = [_P, _I, _I, _P, ctypes.c_int, _P, _P, _I, _I, _I]
        # -1 for no rows: this build has no AVX2 and FMA, and no such layers.
        self.has_linear = self.linear(None, 0, 0, None, 0, None, None, 0, 0, 0) == 0
        self.rms_norm = library.rms_norm_f32
        self.rms_norm.restype, self.rms_norm.argtypes = None, [_P, _P, _P, _I, _I, ctypes.c_float]
        self.pool: ThreadPoolExecutor | None = None
        self.pool_size = 0


_lock = threading.Lock()
_loaded: Kernels | None = None
_tried = False


def _enabled() -> bool:
    value = os.environ.get(ENV_SWITCH, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_SWITCH} must be 0 or 1, got {value!r}")
    return value == "1"


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU implementer", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _build(compiler: str) -> Path:
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    key = hashlib.sha256(
        "\0".join(
            [*(s.read_text() for s in SOURCES + HEADERS), " ".join(FLAGS), version, _cpu_identity()]
        ).encode()
    ).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"vlmserve-kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run(
            [compiler, *FLAGS, "-I", str(HEADERS[0].parent), "-o", str(built), *map(str, SOURCES)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip()[-2000:] or f"exit status {result.returncode}")
        os.replace(built, target)  # atomic: another process sees no file or a whole one
    return target


def load() -> Kernels | None:
    """The kernels, built on first call (about half a second) and then cached; None where
    they are switched off or cannot be built (the reason is logged once)."""
    global _loaded, _tried
    with _lock:
        if _tried:
            return _loaded
        enabled = _enabled()  # a bad value raises on every call, not only the first
        _tried = True
        if not enabled:
            logger.info(
                "native kernels off (%s=0): attention and float32 linears use the torch paths",
                ENV_SWITCH,
            )
            return None
        compiler = os.environ.get("CC") or "cc"
        try:
            path = _build(compiler)
            _loaded = Kernels(ctypes.CDLL(str(path)))
            logger.info("native attention kernel ready: %s", path)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            logger.warning(
                "could not build the native attention kernel with %r (%s); attention and "
                "float32 linears use the slower torch paths",
                compiler,
                str(exc).splitlines()[-1] if str(exc) else type(exc).__name__,
            )
        return _loaded


def reset() -> None:
    """Forget the loaded kernels (tests: to rebuild under another environment)."""
    global _loaded, _tried
    with _lock:
        if _loaded is not None and _loaded.pool is not None:
            _loaded.pool.shutdown(wait=True)
        _loaded, _tried = None, False


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    token_seqs: torch.Tensor,
    token_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor | None:
    """Causal attention of every query token over its sequence's cached context, read in
    place: q [T, Hq, D] -> [T, Hq, D]. Token i belongs to the sequence of block-table row
    `token_seqs[i]` and sees that sequence's first `token_lens[i]` tokens (int64 tensors).
    None where the kernel does not apply (not CPU, a dtype it lacks, q and the cache in
    different dtypes, a head layout beyond its limits, or no kernel)."""
    kernels = load()
    if (
        kernels is None
        or q.device.type != "cpu"
        or q.dtype != kv_cache.dtype
        or q.dtype not in kernels.by_dtype
        or not kv_cache.is_contiguous()
    ):
        return None
    function = kernels.by_dtype[q.dtype]
    tokens, num_heads, head_dim = q.shape
    num_kv_heads, num_blocks, block_size = kv_cache.shape[1], kv_cache.shape[2], kv_cache.shape[3]
    q = q.contiguous()
    tables = block_tables.to(torch.int64).contiguous()
    token_seqs = token_seqs.to(torch.int64).contiguous()
    token_lens = token_lens.to(torch.int64).contiguous()
    if token_seqs.shape != (tokens,) or token_lens.shape != (tokens,):
        raise ValueError("one sequence and one length per query token")
    out = torch.empty_like(q)
    fixed = (
        q.data_ptr(), kv_cache.data_ptr(), tables.data_ptr(), tables.shape[0], tables.shape[1],
        token_seqs.data_ptr(), token_lens.data_ptr(), out.data_ptr(), num_heads, num_kv_heads,
        head_dim, num_blocks, block_size, scale,
    )  # fmt: skip
    items = tokens * num_kv_heads
    threads = min(torch.get_num_threads(), max(1, items // MIN_ITEMS_PER_THREAD))

    def share(first: int) -> int:
        # Interleaved, not in runs: a prompt's late tokens see far more context than its
        # early ones, and every thread should get some of each.
        return int(function(*fixed, first, items, threads))

    status = min(_in_parts(kernels, threads, share))
    if status == -1:
        return None  # a head layout the kernel does not take
    if status == -3:
        raise IndexError("block tables, sequences or lengths outside the KV cache")
    if status != 0:
        raise MemoryError("the native attention kernel could not allocate its scratch space")
    return out


def invariant_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """x [rows, in] float32 (contiguous) times a weight packed by models/rows.py (panels of
    16 outputs, [panels, in, 16], bf16 or float32), plus `bias` (padded to whole panels):
    [rows, out_features]. Each output is summed in one fixed order (linear_avx2.c), so a
    row's bits do not depend on the other rows or the thread count. Only where `load()`
    gave kernels with `has_linear`."""
    kernels = load()
    assert kernels is not None and kernels.has_linear, "invariant_linear without its kernel"
    if x.dtype != torch.float32 or not x.is_contiguous():
        layout = "" if x.is_contiguous() else " (not contiguous)"
        raise TypeError(f"invariant_linear takes a contiguous float32 input, got {x.dtype}{layout}")
    rows, in_features = x.shape
    panels = packed.shape[0]
    out = torch.empty(rows, out_features)
    fixed = (
        x.data_ptr(), rows, in_features, packed.data_ptr(), int(packed.dtype == torch.bfloat16),
        None if bias is None else bias.data_ptr(), out.data_ptr(), out_features,
    )  # fmt: skip
    work = rows * in_features * out_features
    threads = min(torch.get_num_threads(), max(1, work // MIN_MACS_PER_THREAD), panels)
    bounds = [panels * i // threads for i in range(threads + 1)]
    # Contiguous ranges of panels: each thread streams its own part of the weight.
    _in_parts(kernels, threads, lambda i: kernels.linear(*fixed, bounds[i], bounds[i + 1]))
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension of a contiguous float32 CPU
    `x`, in one call (norm.c); None where the kernels are not loaded or the tensors are
    not of that kind (the caller then uses torch)."""
    if (
        x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.device.type != "cpu"
        or not x.is_contiguous()
        or weight.shape != x.shape[-1:]
    ):
        return None  # checked first: a GPU model never builds the CPU kernels for this
    kernels = load()
    if kernels is None:
        return None
    out = torch.empty_like(x)
    dim = x.shape[-1]
    kernels.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.numel() // dim, dim, eps)
    return out


_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14


def allocate_huge(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed CPU tensor whose memory the kernel is asked to back with 2 MiB pages (Linux
    `madvise(MADV_HUGEPAGE)`, before the first touch): attention reads a KV cache's blocks
    in no particular order, and with 4 KiB pages nearly every block is a TLB miss. Measured
    here (a 0.5 GiB layer cache, blocks in random order): decode attention 2.2 -> 1.6 ms a
    layer. Where the advice is refused (other systems, THP off) the pages stay small."""
    tensor = torch.empty(shape, dtype=dtype)
    if sys.platform == "linux" and tensor.nbytes >= _HUGE_PAGE:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        start = -(-tensor.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        end = (tensor.data_ptr() + tensor.nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            libc.madvise(start, end - start, _MADV_HUGEPAGE)
    return tensor.zero_()


def _in_parts(kernels: Kernels, parts: int, part: Callable[[int], T]) -> list[T]:
    """[part(0), ..., part(parts - 1)]: part 0 on the calling thread, the others on the
    kernels' pool at the same time (ctypes releases the GIL); no pool for one part."""
    futures = [_pool(kernels, parts - 1).submit(part, i) for i in range(1, parts)]
    return [part(0), *(future.result() for future in futures)]


def _pool(kernels: Kernels, size: int) -> ThreadPoolExecutor:
    with _lock:
        if kernels.pool is None or kernels.pool_size < size:
            # The smaller pool is dropped, not shut down: another engine thread of this
            # process may be submitting to it right now. Its idle threads end with it.
            kernels.pool = ThreadPoolExecutor(size, thread_name_prefix="vlmserve-kernels")
            kernels.pool_size = size
        return kernels.pool
