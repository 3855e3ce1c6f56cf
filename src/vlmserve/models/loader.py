"""`load_model`: a local folder or hub id -> a native `VLModel` with its `ModelConfig`.

Reads a single `model.safetensors` or a sharded `model.safetensors.index.json`, accepting
both the hub checkpoints' tensor names (`model.layers.*`, `visual.*`) and transformers-5's
(`model.language_model.*`, `model.visual.*`). Every problem is a `FileNotFoundError` or
`ValueError` that names the file or tensor at fault.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from vlmserve.models.base import VLModel
from vlmserve.models.config import ModelConfig, load_model_config
from vlmserve.models.progress import Progress
from vlmserve.models.weights import materialize, meta_model, random_weights

_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
# What a hub download needs: configs, weights, tokenizer and processor files.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]

# transformers-5 name -> hub name; the native modules use the hub names.
_RENAMES = (
    (re.compile(r"^model\.language_model\."), "model."),
    (re.compile(r"^model\.visual\."), "visual."),
)
# Tensors some exports carry that are recomputed, never loaded.
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def load_model(
    model: str,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "auto",
    seed: int = 0,
) -> tuple[VLModel, ModelConfig]:
    """Load `model` (folder or hub id) in `dtype` on `device`, in eval mode.

    `load_format="dummy"` skips the weight files and draws seeded random weights from the
    config alone (for benchmarks of shapes whose weights are not at hand).
    """
    if load_format not in ("auto", "dummy"):
        raise ValueError(f"unknown load_format {load_format!r}; use 'auto' or 'dummy'")
    folder = resolve_model_folder(model, weights=load_format == "auto")
    config = load_model_config(folder)
    native = meta_model(config)
    if load_format == "dummy":
        tensors = random_weights(native, seed, dtype, device)
    else:
        tensors = read_checkpoint(folder, dtype, device)
        _check_unexpected(tensors, native, folder)
    try:
        return materialize(native, tensors), config
    except ValueError as exc:
        raise ValueError(f"{folder}: {exc}") from exc


def resolve_model_folder(model: str, weights: bool = True) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (or found in the hub cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    looks_local = model.startswith((".", "/", "~")) or model.count("/") != 1 or path.exists()
    if looks_local:
        raise FileNotFoundError(
            f"model folder {model} does not exist (a Hugging Face hub id looks like owner/name)"
        )
    from huggingface_hub import snapshot_download

    patterns = _HUB_PATTERNS if weights else [p for p in _HUB_PATTERNS if "safetensors" not in p]
    try:
        return Path(snapshot_download(repo_id=model, allow_patterns=patterns))
    except OSError as exc:  # no network, offline mode, unknown or gated repository
        detail = " ".join(str(exc).split())
        raise FileNotFoundError(
            f"model {model!r} is not a local folder, and the Hugging Face hub did not provide "
            f"it (no network, HF_HUB_OFFLINE, or a wrong id?): {detail[:300]}"
        ) from exc


def read_checkpoint(
    folder: Path, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """All tensors of the folder's safetensors file(s), renamed to hub names."""
    tensors: dict[str, torch.Tensor] = {}
    files = _weight_files(folder)
    with Progress(f"loading weights from {folder}", _count_tensors(files), "tensors") as progress:
        for file in files:
            try:
                with safe_open(str(file), framework="pt", device="cpu") as handle:
                    for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                        key = canonical_name(name)
                        if key in tensors:
                            raise ValueError(
                                f"tensor {key} appears twice (again as {name} in {file})"
                            )
                        tensors[key] = handle.get_tensor(name).to(device=device, dtype=dtype)
                        progress.update()
            except (SafetensorError, OSError) as exc:
                raise ValueError(
                    f"cannot read {file} (corrupt or truncated safetensors?): {exc}"
                ) from exc
    return tensors


def _count_tensors(files: list[Path]) -> int:
    """For the progress bar; reads only the headers. An unreadable file counts 0 here and
    is reported by the read itself."""
    count = 0
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                count += len(handle.keys())
        except (SafetensorError, OSError):
            pass
    return count


def canonical_name(name: str) -> str:
    for pattern, replacement in _RENAMES:
        name = pattern.sub(replacement, name)
    return name


def _weight_files(folder: Path) -> list[Path]:
    index = folder / _INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read the shard index {index}: {exc}") from exc
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} lists shards that are missing: {', '.join(absent)}")
        return files
    single = folder / _SINGLE_FILE
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"no weights in {folder}: expected {_SINGLE_FILE} or {_INDEX_FILE}; a checkpoint "
        "without weights (such as make-tiny-model --preset 7b) runs with random weights "
        "under load_format='dummy'"
    )


def _check_unexpected(
    tensors: dict[str, torch.Tensor], model: torch.nn.Module, folder: Path
) -> None:
    known = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    extra = sorted(n for n in tensors if n not in known and not _IGNORED.search(n))
    if extra:
        raise ValueError(
            f"{folder}: {len(extra)} tensors the {type(model).__name__} model does not have, "
            f"e.g. {', '.join(extra[:5])}"
        )
