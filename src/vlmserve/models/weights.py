"""Native models without allocating twice: build on the meta device, then fill with given
tensors (`materialize`) or with seeded random ones (`random_weights`).

`random_weights` is shared by the tiny-checkpoint writer and `load_format="dummy"`, so a
dummy model on CPU has exactly the weights `make_tiny_model` writes for the same seed
(up to the dtype cast).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vlmserve.models.config import ModelConfig
from vlmserve.models.progress import Progress
from vlmserve.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vlmserve.models.qwen2_vl import Qwen2VLForConditionalGeneration
from vlmserve.models.vl_model import QwenVLModel

MODEL_CLASSES: dict[str, Callable[[ModelConfig], QwenVLModel]] = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}

# Like transformers' init (normal, std 0.02). Biases and norm scales get noise too so that
# parity tests would notice a bias or norm weight that is dropped or misplaced.
_STD = 0.02
_NORM_NOISE = 0.1


def meta_model(config: ModelConfig) -> QwenVLModel:
    with torch.device("meta"):
        return MODEL_CLASSES[config.arch](config)


def parameter_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Checkpoint tensor names and shapes; a tied LM head appears once, as the embedding."""
    return {name: p.shape for name, p in model.named_parameters()}


def random_weights(
    model: nn.Module, seed: int, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Seeded random tensors for every parameter, drawn in float32 in declaration order."""
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    shapes = parameter_shapes(model)
    total = sum(shape.numel() for shape in shapes.values())
    with Progress("drawing random weights", total, "parameters") as progress:
        for name, shape in shapes.items():
            values = torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
            is_norm_scale = len(shape) == 1 and name.endswith("weight")
            values = 1.0 + _NORM_NOISE * values if is_norm_scale else _STD * values
            tensors[name] = values.to(dtype)
            progress.update(shape.numel())
    return tensors


def materialize(model: QwenVLModel, tensors: dict[str, torch.Tensor]) -> QwenVLModel:
    """Replace the (meta) parameters by `tensors`, which must match names and shapes."""
    expected = parameter_shapes(model)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"missing {len(missing)} tensors, e.g. {', '.join(missing[:5])}")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise ValueError(
                f"tensor {name} has shape {list(tensors[name].shape)}, the config implies {list(shape)}"
            )
    state = {name: tensors[name] for name in expected}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()
