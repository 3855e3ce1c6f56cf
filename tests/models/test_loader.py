"""load_model: both tensor naming schemes, shards, tying, dummy weights, and each error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmserve.models.loader import load_model

CPU = torch.device("cpu")


def copy_without_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(tiny_qwen2_vl: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(str(tiny_qwen2_vl), torch.float32, CPU)
    return state(model)


def assert_same(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    got = state(model)
    assert got.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(got[name], tensor), name


def test_loads_hub_names_in_requested_dtype(tiny_qwen2_vl: Path) -> None:
    model, config = load_model(str(tiny_qwen2_vl), torch.bfloat16, CPU)
    assert config.arch == "qwen2_vl"
    raw = load_file(str(tiny_qwen2_vl / "model.safetensors"))
    assert "model.embed_tokens.weight" in raw and "visual.merger.mlp.0.weight" in raw
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    assert torch.equal(params["model.embed_tokens.weight"], raw["model.embed_tokens.weight"])
    assert not model.training


def to_transformers_5_name(name: str) -> str:
    if name.startswith("model."):
        return "model.language_model." + name.removeprefix("model.")
    if name.startswith("visual."):
        return "model." + name
    return name


def test_transformers_5_names_and_shards(
    tmp_path: Path, tiny_qwen2_vl: Path, reference: dict[str, torch.Tensor]
) -> None:
    folder = copy_without_weights(tiny_qwen2_vl, tmp_path / "m")
    raw = load_file(str(tiny_qwen2_vl / "model.safetensors"))
    renamed = {to_transformers_5_name(k): v for k, v in raw.items()}
    names = sorted(renamed)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: renamed[k] for k in keys}, str(folder / file))
        weight_map.update(dict.fromkeys(keys, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model, _ = load_model(str(folder), torch.float32, CPU)
    assert_same(model, reference)


def test_tied_embeddings_need_no_lm_head(tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    folder = copy_without_weights(tiny_qwen2_vl, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    raw = load_file(str(tiny_qwen2_vl / "model.safetensors"))
    del raw["lm_head.weight"]
    save_file(raw, str(folder / "model.safetensors"))
    model, _ = load_model(str(folder), torch.float32, CPU)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # type: ignore[attr-defined]


def test_dummy_weights_equal_the_tiny_checkpoint_for_the_same_seed(
    tmp_path: Path, tiny_qwen2_5_vl: Path
) -> None:
    folder = copy_without_weights(tiny_qwen2_5_vl, tmp_path / "m")  # dummy needs no weights
    dummy, _ = load_model(str(folder), torch.bfloat16, CPU, load_format="dummy", seed=0)
    real, _ = load_model(str(tiny_qwen2_5_vl), torch.bfloat16, CPU)
    assert_same(dummy, state(real))
    other, _ = load_model(str(folder), torch.bfloat16, CPU, load_format="dummy", seed=1)
    assert not torch.equal(other.lm_head.weight, dummy.lm_head.weight)  # type: ignore[attr-defined]


def test_missing_folder() -> None:
    with pytest.raises(FileNotFoundError, match="model folder /nonexistent/model does not exist"):
        load_model("/nonexistent/model", torch.float32, CPU)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_model(str(tmp_path), torch.float32, CPU)


def test_no_weights(tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    folder = copy_without_weights(tiny_qwen2_vl, tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"no weights in .*model\.safetensors"):
        load_model(str(folder), torch.float32, CPU)


def test_truncated_safetensors(tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    folder = copy_without_weights(tiny_qwen2_vl, tmp_path / "m")
    data = (tiny_qwen2_vl / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors \(corrupt"):
        load_model(str(folder), torch.float32, CPU)


def test_missing_tensors_are_listed(tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    folder = copy_without_weights(tiny_qwen2_vl, tmp_path / "m")
    raw = load_file(str(tiny_qwen2_vl / "model.safetensors"))
    gone = [k for k in raw if k.startswith("model.layers.1.")]
    save_file({k: v for k, v in raw.items() if k not in gone}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"missing {len(gone)} tensors, e.g. model\.layers\.1\."):
        load_model(str(folder), torch.float32, CPU)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    folder = copy_without_weights(tiny_qwen2_vl, tmp_path / "m")
    raw = load_file(str(tiny_qwen2_vl / "model.safetensors"))
    raw["model.norm.weight"] = torch.ones(64, dtype=torch.bfloat16)
    save_file(raw, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.norm\.weight has shape \[64\].*\[128\]"):
        load_model(str(folder), torch.float32, CPU)


def test_unexpected_tensors(tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    folder = copy_without_weights(tiny_qwen2_vl, tmp_path / "m")
    raw = load_file(str(tiny_qwen2_vl / "model.safetensors"))
    raw["model.mm_projector.weight"] = torch.zeros(2)
    save_file(raw, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"1 tensors .* does not have, e\.g\. model\.mm_projector"):
        load_model(str(folder), torch.float32, CPU)


def test_unknown_architecture(tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    folder = copy_without_weights(tiny_qwen2_vl, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="mllama", architectures=["MllamaForConditionalGeneration"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture"):
        load_model(str(folder), torch.float32, CPU)


def test_unknown_load_format(tiny_qwen2_vl: Path) -> None:
    with pytest.raises(ValueError, match="unknown load_format 'pt'"):
        load_model(str(tiny_qwen2_vl), torch.float32, CPU, load_format="pt")
