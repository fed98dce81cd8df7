"""Process groups and DeepSpeed wrapping, used on every path (CPU/gloo included).

One process by default: `init_distributed` fills MASTER_ADDR/PORT, RANK, WORLD_SIZE and
LOCAL_RANK when absent, so the same code runs alone or under a launcher (torchrun,
``deepspeed``) with N ranks. `wrap` builds the DeepSpeed engine from a config dict: ZeRO
stage, gradient clipping, gradient accumulation, bf16 only on CUDA; the optimizer is a
torch AdamW and the scheduler a LambdaLR over `algos.schedule.lr_multiplier`, both handed to
DeepSpeed as client objects (DeepSpeed's own Adam ops would first JIT-compile C++ on CPU).

On CPU DeepSpeed also JIT-compiles a shared-memory all-reduce op the first time a process
group starts (about a minute of C++ build, cached in ~/.cache/torch_extensions); unless
``cpu_shm_comm=True`` we mark that op unavailable and DeepSpeed uses gloo collectives.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


COLLECTIVE_TIMEOUT_S = 4 * 3600.0
"""How long a collective may wait: in the RL loop ranks > 0 wait in a broadcast while rank 0
samples, grades and estimates MC values (far longer than torch's 30-minute default)."""


def init_distributed(
    *, cpu_shm_comm: bool = False, timeout_s: float = COLLECTIVE_TIMEOUT_S
) -> DistInfo:
    """Start (or join) the default process group: gloo on CPU, nccl on CUDA. Idempotent."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if int(os.environ["WORLD_SIZE"]) == 1 and not dist.is_initialized():
        # alone: a fresh port, never one inherited from a parent process that holds it
        os.environ["MASTER_PORT"] = str(_free_port())
    elif "MASTER_PORT" not in os.environ:
        raise RuntimeError("WORLD_SIZE > 1 needs MASTER_PORT (set by the launcher)")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = default_device(local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        import deepspeed

        if device.type == "cpu" and not cpu_shm_comm:
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(
            dist_backend=backend, auto_mpi_discovery=False, timeout=timedelta(seconds=timeout_s)
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (or when no process group is running)."""
    return rank() == 0


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over all ranks (a new tensor; ``x`` itself when alone)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


T = TypeVar("T")


def broadcast_from_main(obj: T | None) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object; other ranks pass anything, e.g.
    None). Alone, ``obj`` itself. Used to do queue/grader work once and share the result."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return cast(T, obj)  # alone: rank 0's own object
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return cast(T, box[0])


class RankFailed(RuntimeError):
    """Raised on every rank when work that rank 0 alone did failed there (`on_main`)."""


async def on_main(work: Callable[[], Awaitable[T]]) -> T:
    """Await ``work()`` on rank 0 alone and give every rank its result; alone, just await it.

    Rank 0 broadcasts the outcome, an exception included: it re-raises its own, the other
    ranks raise `RankFailed` naming it, so no rank is left waiting in a collective for one
    that has given up (the broadcast runs in a thread: this event loop's replicas and
    heartbeats keep running meanwhile)."""
    if world_size() == 1:
        return await work()
    outcome: tuple[bool, Any] | None = None
    error: BaseException | None = None
    if rank() == 0:
        try:
            outcome = (True, await work())
        except Exception as e:
            error, outcome = e, (False, f"{type(e).__name__}: {e}")
    ok, value = await asyncio.to_thread(broadcast_from_main, outcome)
    if error is not None:
        raise error
    if not ok:
        raise RankFailed(f"rank 0 failed: {value}")
    return cast(T, value)


def check_same_on_every_rank(what: str, value: Any) -> None:
    """Raise `ValueError` (one line, on every rank) unless ``value`` is rank 0's on all ranks:
    ranks that disagree about the run (its config, the checkpoint it resumes) would take
    different paths through the collectives and wait in them for each other until a timeout."""
    if world_size() == 1:
        return
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if not odd:
        return
    mine, main = values[odd[0]], values[0]
    if isinstance(mine, dict) and isinstance(main, dict):  # name the keys that differ
        keys = sorted(k for k in mine.keys() | main.keys() if mine.get(k) != main.get(k))
        detail = ", ".join(f"{k}={mine.get(k)!r} vs {main.get(k)!r}" for k in keys[:3])
    else:
        detail = f"{mine!r} vs {main!r}"
    raise ValueError(
        f"rank {odd[0]} disagrees with rank 0 about {what} ({detail}): every rank must run "
        "the same command on the same files"
    )


def gathered_params(model: nn.Module, zero_stage: int) -> AbstractContextManager[Any]:
    """Context with the full parameters materialised (ZeRO-3 partitions them); a no-op below 3."""
    if zero_stage < 3:
        return nullcontext()
    import deepspeed

    gathered: AbstractContextManager[Any] = deepspeed.zero.GatheredParameters(
        list(model.parameters()), modifier_rank=None
    )
    return gathered


def ds_config(
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    grad_clip: float,
    zero_stage: int,
    bf16: bool,
    world: int | None = None,
    zero_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config dict (optimizer and scheduler are passed as client objects);
    ``zero_extra`` adds ``zero_optimization`` keys (e.g. ``stage3_param_persistence_threshold``:
    ZeRO-3 leaves parameters under that many elements whole on every rank, 1e5 by default)."""
    world = world_size() if world is None else world
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage, **(zero_extra or {})},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def wrap(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    zero_stage: int = 0,
    total_steps: int = 1,
    warmup_steps: int = 0,
    lr_end_ratio: float = 0.0,
    decay_power: float = 1.0,
    micro_batch_size: int = 1,
    grad_accum_steps: int = 1,
    bf16: bool | None = None,
    schedule_step: Callable[[int], int] | None = None,
    zero_extra: dict[str, Any] | None = None,
) -> Any:  # deepspeed.DeepSpeedEngine
    """A DeepSpeed engine around ``model`` with AdamW + warm-up/polynomial-decay schedule.

    Use ``engine(...)`` forward, ``engine.backward(loss)``, ``engine.step()`` (steps the
    optimizer and scheduler at each gradient-accumulation boundary, clipping first).
    ``schedule_step`` maps the optimizer step to the step the LR schedule uses (e.g. one
    derived from elapsed time when a run has a time budget); ``zero_extra``: see `ds_config`.
    """
    import deepspeed

    from services.trainer.algos.schedule import lr_multiplier

    info = init_distributed()
    use_bf16 = info.device.type == "cuda" if bf16 is None else bf16 and info.device.type == "cuda"
    model = model.to(info.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)

    def multiplier(step: int) -> float:
        effective = step if schedule_step is None else schedule_step(step)
        return lr_multiplier(
            effective,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            end_ratio=lr_end_ratio,
            power=decay_power,
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    config = ds_config(
        micro_batch_size=micro_batch_size,
        grad_accum_steps=grad_accum_steps,
        grad_clip=grad_clip,
        zero_stage=zero_stage,
        bf16=use_bf16,
        world=info.world_size,
        zero_extra=zero_extra,
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
    )
    return engine
