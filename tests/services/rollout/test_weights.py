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
    read_weights,
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


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_status(root: Path | None, path: str, **kw: object) -> tuple[int, str]:
    kw.setdefault("max_bytes", 10**9)
    with pytest.raises(WeightsPathError) as info:
        read_weights(root, path, **kw)  # type: ignore[arg-type]
    return info.value.status, info.value.code


def test_read_weights_confines_checks_digests_and_caps_size(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    good = root / "policy-v1"
    good.mkdir(parents=True)
    save_file({"w": torch.ones(4)}, good / "model.safetensors")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    save_file({"w": torch.full((4,), 9.0)}, outside / "model.safetensors")
    # a directory inside the root whose shard is a symlink to a file outside it
    sneaky = root / "policy-v2"
    sneaky.mkdir()
    (sneaky / "model.safetensors").symlink_to(outside / "model.safetensors")
    digest = {"model.safetensors": _digest(good / "model.safetensors")}

    w = read_weights(root, "policy-v1", max_bytes=10**6, sha256=digest)
    assert w.sha256 == digest and w.total_bytes == (good / "model.safetensors").stat().st_size
    assert _read_status(root, "policy-v2") == (403, "forbidden")  # symlinked shard
    assert _read_status(root, "../elsewhere") == (403, "forbidden")
    assert _read_status(None, str(good)) == (403, "forbidden")  # no root: nothing loads
    wrong = {"model.safetensors": "0" * 64}
    assert _read_status(root, "policy-v1", sha256=wrong) == (409, "digest_mismatch")
    other = {"other.safetensors": digest["model.safetensors"]}
    assert _read_status(root, "policy-v1", sha256=other)[0] in (404, 409)
    assert _read_status(root, "policy-v1", max_bytes=10) == (413, "weights_too_large")


def test_loads_the_bytes_that_were_checked_not_the_file_later(tmp_path: Path) -> None:
    """No check-then-load race: swapping the file after the checks changes nothing."""
    root = tmp_path / "ckpt"
    (root / "p").mkdir(parents=True)
    good = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    save_file(good, root / "p" / "model.safetensors")
    verified = read_weights(root, "p", max_bytes=10**6)
    save_file({k: v * 7 for k, v in good.items()}, root / "p" / "model.safetensors")
    model = torch.nn.Linear(3, 2)
    assert load_safetensors_into(model, verified) == 2
    assert torch.equal(model.weight, torch.ones(2, 3))


def test_a_fifo_shard_is_refused_before_it_can_block(tmp_path: Path) -> None:
    """A FIFO named ``model.safetensors`` (in a directory, or as the path itself) is refused
    with 415 at once: opened non-blocking and checked before a byte is read (a blocking open
    waited for a writer forever)."""
    import os
    import threading

    root = tmp_path / "ckpt"
    (root / "fifo").mkdir(parents=True)
    fifos = {
        "fifo": root / "fifo" / "model.safetensors",
        "bare.safetensors": root / "bare.safetensors",
    }
    for fifo in fifos.values():
        os.mkfifo(fifo)
    for path, fifo in fifos.items():
        got: list[tuple[int, str]] = []

        def read(path: str = path, got: list[tuple[int, str]] = got) -> None:
            got.append(_read_status(root, path))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=10)
        blocked = reader.is_alive()
        if blocked:  # let a blocked open go (a writer appears), so the test can end
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(timeout=10)
        assert not blocked, f"reading {path!r} blocked"
        assert got == [(415, "unsupported_weights_format")]


def test_check_finite_refuses_nan_and_inf_in_every_float_dtype(tmp_path: Path) -> None:
    """NaN/±inf anywhere in a float tensor (float64 ... float8) is refused; integer tensors,
    empty tensors and finite values pass; a header that does not fit the bytes is a
    ``WeightsError`` (400 ``bad_weights``), never a crash."""
    from safetensors.torch import save

    from services.rollout.engine.weights import VerifiedWeights, WeightsRefused, check_finite

    def weights(tensors: dict[str, torch.Tensor]) -> VerifiedWeights:
        return VerifiedWeights(tmp_path, {"model.safetensors": save(tensors)})

    dtypes = [
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    ]
    for dtype in dtypes:
        fine = {"ids": torch.arange(5), "w": torch.randn(3000).to(dtype), "e": torch.ones(0)}
        check_finite(weights(fine))
        for bad in (float("nan"), float("inf"), float("-inf")):
            if bad != bad or dtype != torch.float8_e4m3fn:  # e4m3fn has no infinity
                poisoned = torch.randn(3000)
                poisoned[2999] = bad
                with pytest.raises(WeightsRefused) as info:
                    check_finite(weights({**fine, "p": poisoned.to(dtype)}))
                assert (info.value.status, info.value.code) == (400, "non_finite_weights")
    broken = save({"w": torch.ones(4)})[:-4]  # the tensor runs past the end of the bytes
    with pytest.raises(WeightsError, match=r"past the end|header"):
        check_finite(VerifiedWeights(tmp_path, {"model.safetensors": broken}))
