"""Inference engines behind one interface (``Engine``): ``torch`` and ``vllm``.

``make_engine("torch", "models/tiny", device="cpu")`` builds one by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.rollout.engine.base import (
    Engine,
    EngineInputError,
    EngineStats,
    Prefix,
    WeightsError,
)

if TYPE_CHECKING:
    from services.rollout.settings import RolloutSettings

ENGINE_KINDS = ("torch", "vllm")


def engine_kwargs(settings: RolloutSettings) -> dict[str, Any]:
    """The constructor keywords of ``settings.engine`` taken from the rollout settings."""
    kw: dict[str, Any] = {"dtype": settings.dtype, "max_batch": settings.max_batch}
    if settings.engine == "torch":
        kw["device"] = settings.device
    else:
        kw.update(kv_cache_gib=settings.kv_cache_gib, enforce_eager=settings.enforce_eager,
                  gpu_memory_utilization=settings.gpu_memory_utilization)  # fmt: skip
    return kw


def make_engine(kind: str, model_dir: str | Path, **kw: Any) -> Engine:
    """Build the engine named ``kind`` over the model at ``model_dir``.

    Keyword arguments go to the engine's constructor (device, dtype, max_batch, version).
    """
    if kind == "torch":
        from services.rollout.engine.torch_engine import TorchEngine

        return TorchEngine(model_dir, **kw)
    if kind == "vllm":
        from services.rollout.engine.vllm_engine import VllmEngine

        return VllmEngine(model_dir, **kw)
    raise ValueError(f"unknown engine kind {kind!r}; known: {', '.join(ENGINE_KINDS)}")


__all__ = [
    "ENGINE_KINDS",
    "Engine",
    "EngineInputError",
    "EngineStats",
    "Prefix",
    "WeightsError",
    "engine_kwargs",
    "make_engine",
]
