"""Trainer checkpoints that resume exactly: models, optimizers, schedulers, RNG, data position.

Layout under ``<output_dir>/checkpoints``: ``iter-<N>/`` (complete, written to a temp dir and
renamed, so a ``kill -9`` leaves either the old or the new one) and ``latest`` (a text file
with N, replaced atomically). Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

LATEST = "latest"


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def _engine_state(engine: Any) -> dict[str, Any]:
    return {
        "module": engine.module.state_dict(),
        "optimizer": engine.optimizer.state_dict(),
        "scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler else None,
        "global_steps": engine.global_steps,
    }


def _load_engine_state(engine: Any, state: dict[str, Any]) -> None:
    engine.module.load_state_dict(state["module"])
    engine.optimizer.load_state_dict(state["optimizer"])
    if state["scheduler"] is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(state["scheduler"])
    engine.global_steps = state["global_steps"]


def _fsync_tree(path: Path) -> None:
    for p in [*path.rglob("*"), path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(
    root: Path, iteration: int, engines: dict[str, Any], trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:  # fmt: skip
    """Write ``iter-<iteration>`` atomically, point ``latest`` at it, prune older ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter-{iteration}"
    tmp = root / f".tmp-iter-{iteration}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, engine in engines.items():
        torch.save(_engine_state(engine), tmp / f"{name}.pt")
    torch.save({**trainer_state, "rng": _rng_state()}, tmp / "trainer_state.pt")
    _fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(str(iteration))
    os.replace(pointer, root / LATEST)
    for old in sorted(root.glob("iter-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / f"iter-{int(pointer.read_text().strip())}"
    return path if path.is_dir() else None


def load_checkpoint(path: Path, engines: dict[str, Any]) -> dict[str, Any]:
    """Restore every engine and the RNG; return the trainer state that was saved."""
    for name, engine in engines.items():
        state = torch.load(path / f"{name}.pt", map_location="cpu", weights_only=False)
        _load_engine_state(engine, state)
    trainer_state: dict[str, Any] = torch.load(
        path / "trainer_state.pt", map_location="cpu", weights_only=False
    )
    _set_rng_state(trainer_state.pop("rng"))
    return trainer_state
