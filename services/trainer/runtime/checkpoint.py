"""Trainer checkpoints that resume exactly: models, optimizers, schedulers, RNG, data position.

Layout under ``<output_dir>/checkpoints``: ``iter-<N>/`` (complete, written to a temp dir and
renamed, so a ``kill -9`` leaves either the old or the new one) and ``latest`` (a text file
with N, replaced atomically). Only the newest ``keep`` checkpoints are kept.

``iter-<N>/<name>.pt`` holds an engine's module, optimizer, LR scheduler and step count
(rank 0's). With several ranks every rank calls `save_checkpoint`/`load_checkpoint`: under
ZeRO 1-2 each rank's optimizer holds only its partition, so ranks > 0 add
``<name>.rank<r>.pt`` (their optimizer state); under ZeRO 0 the ranks are identical and rank
0 alone writes. ZeRO-3 engines (partitioned parameters) are refused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

LATEST = "latest"


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _zero_stage(engine: Any) -> int:
    stage = getattr(engine, "zero_optimization_stage", None)
    return int(stage()) if callable(stage) else 0


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


def _write_engine(tmp: Path, name: str, engine: Any, rank: int) -> None:
    """Rank 0: the whole state; ranks > 0 under ZeRO 1-2: their optimizer partition."""
    stage = _zero_stage(engine)
    if stage >= 3:
        raise NotImplementedError(
            f"checkpoints of ZeRO-3 engines ({name}) are not supported: use dist.zero_stage <= 2"
        )
    if rank == 0:
        torch.save(_engine_state(engine), tmp / f"{name}.pt")
    elif stage > 0:
        torch.save({"optimizer": engine.optimizer.state_dict()}, tmp / f"{name}.rank{rank}.pt")


def _load_engine_state(engine: Any, state: dict[str, Any], path: Path, name: str) -> None:
    engine.module.load_state_dict(state["module"])
    if _zero_stage(engine) > 0:  # a ZeRO optimizer takes every rank's partition state
        _, world = _rank_world()
        parts = [state["optimizer"]] + [
            torch.load(path / f"{name}.rank{r}.pt", map_location="cpu", weights_only=False)[
                "optimizer"
            ]
            for r in range(1, world)
        ]
        engine.optimizer.load_state_dict(parts, load_from_fp32_weights=True)
    else:
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
    root: Path,
    iteration: int,
    engines: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``iter-<iteration>`` atomically, point ``latest`` at it, prune older ones.
    Every rank calls it; rank 0 writes the trainer state and renames."""
    rank, world = _rank_world()
    final = root / f"iter-{iteration}"
    tmp = root / f".tmp-iter-{iteration}"  # one name on every rank
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    for name, engine in engines.items():
        _write_engine(tmp, name, engine, rank)
    _barrier()
    if rank != 0:
        _barrier()  # until rank 0 has renamed it
        return final
    torch.save({**trainer_state, "rng": _rng_state()}, tmp / "trainer_state.pt")
    _fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(str(iteration))
    os.replace(pointer, root / LATEST)
    for old in sorted(root.glob("iter-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    if world > 1:
        _barrier()
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / f"iter-{int(pointer.read_text().strip())}"
    return path if path.is_dir() else None


def load_checkpoint(path: Path, engines: dict[str, Any]) -> dict[str, Any]:
    """Restore every engine and the RNG; return the trainer state that was saved. Every rank
    calls it (with ZeRO 1-2 each takes its own optimizer partition)."""
    for name, engine in engines.items():
        state = torch.load(path / f"{name}.pt", map_location="cpu", weights_only=False)
        _load_engine_state(engine, state, path, name)
    trainer_state: dict[str, Any] = torch.load(
        path / "trainer_state.pt", map_location="cpu", weights_only=False
    )
    _set_rng_state(trainer_state.pop("rng"))
    return trainer_state


def keep_if_best(
    out: Path, row: dict[str, Any], model: Any, tokenizer: Any, info: dict[str, Any]
) -> bool:
    """Keep ``model`` in ``out/best`` (+ ``best.json`` = ``info`` and ``acc/val``) when
    ``row``'s ``acc/val`` beats the one kept there; replaced atomically (written aside, then
    renamed). Read by ``vineppo eval --select-on validation``. True when it was kept."""
    if "acc/val" not in row:
        return False
    best, meta = out / "best", out / "best" / "best.json"
    if meta.is_file() and json.loads(meta.read_text())["acc/val"] >= row["acc/val"]:
        return False
    tmp = out / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "best.json").write_text(json.dumps({**info, "acc/val": row["acc/val"]}))
    shutil.rmtree(best, ignore_errors=True)
    os.rename(tmp, best)
    return True
