"""Weights path checks and the in-place safetensors loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from services.rollout.engine.base import WeightsError
from services.rollout.engine.weights import (
    WeightsPathError,
    load_safetensors_into,
    resolve_weights_path,
)


def _status(root: Path, path: str) -> int:
    with pytest.raises(WeightsPathError) as info:
        resolve_weights_path(root, path)
    return info.value.status


def test_resolve_weights_path_refusals(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    (root / "policy-v1").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, root / "policy-v1" / "model.safetensors")
    (root / "pickled").mkdir()
    (root / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    save_file({"w": torch.zeros(2)}, outside / "model.safetensors")
    (root / "link").symlink_to(outside)

    assert resolve_weights_path(root, "policy-v1") == (root / "policy-v1").resolve()
    assert resolve_weights_path(root, str(root / "policy-v1" / "model.safetensors")).is_file()
    assert _status(root, str(outside)) == 403  # absolute path outside the root
    assert _status(root, "../elsewhere") == 403  # traversal
    assert _status(root, "link") == 403  # symlink escaping the root
    assert _status(root, "pickled/pytorch_model.bin") == 415  # pickle file
    assert _status(root, "pickled") == 415  # dir with only a pickle
    assert _status(root, "policy-v9") == 404


def test_loader_checks_names_shapes_and_coverage(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    good = {"weight": torch.ones(2, 3), "bias": torch.full((2,), 2.0)}
    save_file(good, tmp_path / "good.safetensors")
    assert load_safetensors_into(model, tmp_path / "good.safetensors") == 2
    assert torch.equal(model.bias, torch.full((2,), 2.0))
    cases = {
        "shape": {"weight": torch.ones(3, 3), "bias": torch.ones(2)},
        "unknown": {**good, "extra": torch.ones(1)},
        "missing": {"weight": torch.ones(2, 3)},
    }
    for name, tensors in cases.items():
        save_file(tensors, tmp_path / f"{name}.safetensors")
        with pytest.raises(WeightsError, match=name):
            load_safetensors_into(model, tmp_path / f"{name}.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a readable"):
        load_safetensors_into(model, tmp_path / "junk.safetensors")
    assert torch.equal(model.weight, torch.ones(2, 3))  # failed loads changed nothing
