"""Loading policy weights safely: safetensors only, and only from under the checkpoint root.

``resolve_weights_path`` is what ``POST /v1/weights`` checks before any engine sees a path;
``load_safetensors_into`` copies the tensors of a safetensors dir/file into a live model in
place (no pickle is ever unpickled: ``.bin``/``.pt``/``.pkl`` are refused).
"""

from __future__ import annotations

from pathlib import Path

import torch

from services.rollout.engine.base import WeightsError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class WeightsPathError(WeightsError):
    """A refused weights path; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def resolve_weights_path(root: Path, path: str) -> Path:
    """The real path of ``path`` (relative paths are under ``root``) after checking it.

    Refuses (WeightsPathError): anything resolving outside ``root`` (symlinks followed),
    a pickle-format file, a missing path, a directory without ``*.safetensors``.
    """
    root_real = root.expanduser().resolve()
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = root_real / candidate
    real = candidate.resolve()
    if real != root_real and root_real not in real.parents:
        raise WeightsPathError(
            f"path {path!r} is outside the checkpoint root {str(root_real)!r}", 403, "forbidden"
        )
    if real.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsPathError(
            f"{real.name}: pickle checkpoints are refused; save weights as .safetensors",
            415,
            "unsupported_weights_format",
        )
    if not real.exists():
        raise WeightsPathError(f"path {path!r} does not exist", 404, "not_found")
    if real.is_file() and real.suffix != ".safetensors":
        raise WeightsPathError(
            f"{real.name}: only .safetensors files are loaded", 415, "unsupported_weights_format"
        )
    if real.is_dir() and not any(real.glob("*.safetensors")):
        raise WeightsPathError(
            f"{path!r} holds no *.safetensors file (pickle checkpoints are refused)",
            415,
            "unsupported_weights_format",
        )
    return real


def safetensors_shards(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(f"{path.name}: only .safetensors files are loaded")
        return [path]
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise WeightsError(f"{path} holds no *.safetensors file")
    return shards


def load_safetensors_into(model: torch.nn.Module, path: Path) -> int:
    """Copy every tensor of the safetensors file(s) at ``path`` into ``model``; returns count.

    Every tensor must name a parameter/buffer of the model with the same shape; every
    parameter must be covered (tied weights count as covered). Nothing is copied unless
    all checks pass.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for shard in safetensors_shards(path):
        try:
            loaded.update(load_file(str(shard), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{shard.name}: not a readable safetensors file ({exc})") from exc
    unknown = sorted(set(loaded) - set(state))
    if unknown:
        raise WeightsError(f"unknown tensors (not in the model): {unknown[:5]}")
    bad = [n for n, t in loaded.items() if tuple(t.shape) != tuple(state[n].shape)]
    if bad:
        raise WeightsError(f"shape mismatch for {bad[:5]}")
    covered = {state[n].data_ptr() for n in loaded}
    missing = [n for n, t in state.items() if n not in loaded and t.data_ptr() not in covered]
    if missing:
        raise WeightsError(f"weights missing for {missing[:5]}")
    with torch.no_grad():
        for name, tensor in loaded.items():
            state[name].copy_(tensor.to(dtype=state[name].dtype))
    return len(loaded)
