"""The services a training run talks to, started on loopback when not given.

- reward: ``reward_url`` if given, else the reward app under uvicorn on a free loopback port
  (its grading still runs in sandboxed worker processes);
- queue: Redis Streams when ``redis_url`` is set, else the in-process queue;
- rollout: with ``local_replicas > 0`` that many workers (``engine``: torch or vllm) run as
  tasks of this event loop (required with the in-process queue); with Redis, replicas may also run
  elsewhere (``vineppo serve rollout --worker-only``) and find the run through Redis and the
  checkpoint volume.

Under a launcher (W ranks) rank 0 alone starts or connects to them: the loop sends every
queue and grader call from rank 0 and broadcasts the results (`runtime.distributed.on_main`).
Ranks > 0 get `Services` whose queue and grader raise at the first use, naming the caller,
instead of being services of their own that nobody else writes to (each rank waiting on its
own queue for weights only rank 0 announces, until a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from shared.queue import JobQueue, make_queue


@dataclass
class Services:
    """Where the loop sends work: the job queue (rollout replicas) and the grader."""

    queue: JobQueue
    grader: Any  # has ``async grade(items) -> list[Verdict]`` (RewardClient)
    min_replicas: int = 1
    replica_timeout_s: float = 600.0
    job_size: int = 16
    policy_root: Path | None = None  # where policy-vN/ go for replicas; None = <out>/policies


class RankZeroOnly:
    """The queue or grader of a rank > 0: every attribute raises (only rank 0 talks to the
    services; the others get its results by broadcast)."""

    def __init__(self, what: str, rank: int) -> None:
        self._what, self._rank = what, rank

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"rank {self._rank} used {self._what}.{name}: only rank 0 talks to the services "
            "(ranks > 0 get its results by broadcast)"
        )


def launcher_rank() -> int:
    """This process's rank: the process group's when it runs, else the launcher's RANK."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


@contextlib.asynccontextmanager
async def run_services(
    model_dir: str | Path,
    checkpoint_root: Path,
    *,
    redis_url: str | None = None,
    reward_url: str | None = None,
    reward_token: str | None = None,
    local_replicas: int = 1,
    device: str | None = None,
    engine: str = "auto",
    queue_prefix: str = "vineppo:",
    job_size: int = 16,
    max_batch: int = 64,
    dtype: str | None = None,
) -> AsyncIterator[Services]:
    """Start (or connect to) the services of a run; yields the `Services` the loop uses.

    ``checkpoint_root``: where the loop writes ``policy-vN/`` and the local replicas load them
    (the shared volume when replicas run elsewhere). ``reward_token``: bearer token for a
    reward service with REQUIRE_TOKEN.

    ``engine`` of the local replicas: ``auto`` (by model size), ``torch`` or ``vllm``.
    ``device`` of a local torch engine: None = ``cuda`` when available (bf16, SDPA), else
    ``cpu`` (float32).
    ``max_batch``: rows one engine decodes together (raise it to fill a GPU: e.g. 256-512
    for a 135 M model on an 80 GB card).
    ``dtype`` of the local replicas (None = the engine's default for its device); the train
    command passes the trainer's compute dtype, so replicas sample in the precision it trains.
    """
    import torch

    from services.reward.client import RewardClient
    from services.rollout.engine import make_engine
    from services.rollout.worker import WorkerConfig, run_worker

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if redis_url is None and local_replicas < 1:
        raise ValueError("the in-process queue needs at least one local rollout replica")
    if (rank := launcher_rank()) != 0:  # rank 0 owns the services (module docstring)
        yield Services(
            queue=cast(JobQueue, RankZeroOnly("the queue", rank)),
            grader=RankZeroOnly("the grader", rank),
            min_replicas=max(1, local_replicas),
            job_size=job_size,
            policy_root=checkpoint_root,
        )
        return
    with contextlib.ExitStack() as stack:
        if reward_url is None:
            from services.reward.app import create_app
            from services.reward.settings import RewardSettings
            from shared.serve import serve_in_thread

            reward_url = stack.enter_context(serve_in_thread(create_app(RewardSettings())))
        queue = make_queue(redis_url, prefix=queue_prefix)
        grader = RewardClient(reward_url, token=reward_token)
        stop = asyncio.Event()
        workers = []
        engines = []
        for i in range(local_replicas):
            eng = await asyncio.to_thread(
                make_engine, engine, model_dir, max_batch=max_batch, device=device, dtype=dtype
            )
            engines.append(eng)
            config = WorkerConfig(replica_id=f"local-{i}", checkpoint_root=checkpoint_root)
            workers.append(asyncio.create_task(run_worker(queue, eng, grader, config, stop)))
        try:
            yield Services(
                queue=queue,
                grader=grader,
                min_replicas=max(1, local_replicas),
                job_size=job_size,
                policy_root=checkpoint_root,
            )
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
            for eng in engines:
                await eng.close()
            await grader.aclose()
            close = getattr(queue, "close", None)
            if close is not None:
                await close()
