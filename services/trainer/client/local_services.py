"""The services a training run talks to, started on loopback when not given.

- reward: ``reward_url`` if given, else the reward app under uvicorn on a free loopback port
  (its grading still runs in sandboxed worker processes);
- queue: Redis Streams when ``redis_url`` is set, else the in-process queue;
- rollout: with ``local_replicas > 0`` that many workers (``engine``: torch or vllm) run as
  tasks of this event loop (required with the in-process queue); with Redis, replicas may also run
  elsewhere (``vineppo serve rollout --worker-only``) and find the run through Redis and the
  checkpoint volume.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """
    import torch

    from services.reward.client import RewardClient
    from services.rollout.engine import make_engine
    from services.rollout.worker import WorkerConfig, run_worker

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if redis_url is None and local_replicas < 1:
        raise ValueError("the in-process queue needs at least one local rollout replica")
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
                make_engine, engine, model_dir, max_batch=max_batch, device=device
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
