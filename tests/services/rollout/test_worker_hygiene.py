"""The rollout worker over long runs, in-process with real TorchEngines and a real
redis-server: dead replicas' consumers leave the stream's group, a re-announced version is
loaded unless its bytes are the ones served, NaN weights are refused over the queue too."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import torch
from redis.asyncio import Redis
from safetensors.torch import load_file, save_file

from services.reward.client import RewardClient
from services.rollout.engine.torch_engine import TorchEngine
from services.rollout.worker import RolloutWorker, WorkerConfig
from services.trainer.client.jobs import JobOptions, run_jobs
from services.trainer.client.weights import announcement
from shared.queue import JobQueue
from shared.queue.redis_streams import GROUP
from tests.services.rollout.test_worker import GREEDY, TEXTS, fast_config, gen_job
from tests.services.rollout.tiny import make_tiny_model_dir, save_weights

pytestmark = [pytest.mark.server, pytest.mark.redis]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", vocab_texts=TEXTS)


def gc_config(replica_id: str) -> WorkerConfig:
    """Fast beats and a consumer sweep every 0.5 s of consumers idle for 1 s."""
    return WorkerConfig(
        replica_id=replica_id,
        block_ms=200,
        heartbeat_s=0.2,
        heartbeat_ttl_s=1.0,
        claim_idle_ms=1500,
        consumer_gc_s=0.5,
        consumer_idle_ms=1000,
    )


async def consumers(queue: JobQueue, redis_url: str, version: int = 0) -> set[str]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        rows = await redis.xinfo_consumers(f"{queue.prefix}jobs:v{version}", GROUP)
    finally:
        await redis.aclose()
    return {str(r["name"]) for r in rows}


async def test_dead_replicas_leave_the_consumer_group(
    queue: JobQueue, redis_url: str, tiny_dir: Path, reward_url: str
) -> None:
    """Four replicas serve a job each and die (a restart is a new replica id): once idle past
    ``consumer_idle_ms`` with no heartbeat, the live replica removes them; the group holds
    only live consumers (it used to keep one per restart, forever)."""
    engine = TorchEngine(tiny_dir)
    for i in range(4):
        stop = asyncio.Event()
        worker = RolloutWorker(queue, engine, RewardClient(reward_url), gc_config(f"gone-{i}"))
        task = asyncio.create_task(worker.run(stop))
        await run_jobs(queue, [gen_job(0, f"Question: {i}+1=?\n")], JobOptions(progress=False))
        stop.set()
        await task
    assert await consumers(queue, redis_url) == {f"gone-{i}" for i in range(4)}
    stop = asyncio.Event()
    live = RolloutWorker(queue, TorchEngine(tiny_dir), RewardClient(reward_url), gc_config("live"))
    task = asyncio.create_task(live.run(stop))
    try:
        await run_jobs(queue, [gen_job(0, "Question: 9+1=?\n")], JobOptions(progress=False))
        deadline = asyncio.get_running_loop().time() + 20
        while (names := await consumers(queue, redis_url)) != {"live"}:
            assert asyncio.get_running_loop().time() < deadline, names
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task


async def _wait_loaded(worker: RolloutWorker, version: int, generation: int) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while (worker.engine.version, worker.generation, worker.state) != (
        version,
        generation,
        "ready",
    ):
        assert asyncio.get_running_loop().time() < deadline, (worker.state, worker.error)
        await asyncio.sleep(0.05)


async def test_a_reannounced_version_is_loaded_unless_its_bytes_are_served(
    queue: JobQueue,
    tiny_dir: Path,
    reward_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A later trainer generation re-announcing the version served: adopted without a load
    when the shards are the ones served (by SHA-256), loaded when they differ (it used to be
    adopted either way, so v1 no longer named the weights served)."""
    root = tmp_path / "ckpt"
    save_weights(tiny_dir, root / "policy-v1", seed=1)
    save_weights(tiny_dir, root / "other-v1", seed=2)
    engine = TorchEngine(tiny_dir)
    worker = RolloutWorker(queue, engine, RewardClient(reward_url), fast_config("r", root))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    prompt = ["Question: 2+3=?\n"]
    try:
        with caplog.at_level(logging.INFO, logger="services.rollout.worker"):
            first = announcement(1, root / "policy-v1").model_copy(update={"generation": 10})
            await queue.publish_weights(first)
            await _wait_loaded(worker, 1, 10)
            served = (await engine.generate(prompt, 1, GREEDY))[0][0].token_ids
            same = first.model_copy(update={"generation": 11})
            await queue.publish_weights(same)
            await _wait_loaded(worker, 1, 11)
            other = announcement(1, root / "other-v1").model_copy(update={"generation": 12})
            await queue.publish_weights(other)
            await _wait_loaded(worker, 1, 12)
        loads = [r for r in caplog.records if "loaded v1" in r.getMessage()]
        assert len(loads) == 2  # generation 10 and 12; 11 had the same bytes
        assert (await engine.generate(prompt, 1, GREEDY))[0][0].token_ids != served
    finally:
        stop.set()
        await task


async def test_nan_weights_are_refused_over_the_queue(
    queue: JobQueue, tiny_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "ckpt"
    path = save_weights(tiny_dir, root / "policy-v1", seed=1)
    tensors = load_file(path / "model.safetensors")
    tensors[sorted(tensors)[0]].view(-1)[0] = torch.nan
    save_file(tensors, path / "model.safetensors")
    worker = RolloutWorker(
        queue, TorchEngine(tiny_dir), RewardClient(reward_url), fast_config("r", root)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await queue.publish_weights(announcement(1, path))
        deadline = asyncio.get_running_loop().time() + 20
        while worker.state != "failed":
            assert asyncio.get_running_loop().time() < deadline, worker.state
            await asyncio.sleep(0.05)
        assert worker.engine.version == 0 and "NaN or infinite" in (worker.error or "")
    finally:
        stop.set()
        await task
