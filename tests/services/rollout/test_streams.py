"""Independent samples through the whole path (trainer job client -> queue -> worker ->
torch engine -> real reward service): every sample's random stream is keyed by its global
position in the trainer's batch, so job chunks never share a stream, the same request
reproduces exactly, and ``job_size`` changes no sample.

The model draws '7' or EOS with probability 1/2 whatever the prompt, so two prompts'
samples can differ only through their random streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from services.reward.client import RewardClient
from services.rollout.engine.torch_engine import TorchEngine
from services.rollout.worker import RolloutWorker, WorkerConfig
from services.trainer.client.jobs import (
    JobOptions,
    run_generate_jobs,
    run_value_jobs,
    wait_for_replicas,
)
from shared.queue import InProcessQueue, JobQueue
from shared.schemas import SamplingParams, ValueItem

pytestmark = pytest.mark.server

PROMPTS = [f"Question {c}: what is 3 + 4?\nAnswer:\n" for c in "ABCD"]


@asynccontextmanager
async def serving(model_dir: Path, reward_url: str) -> AsyncIterator[JobQueue]:
    """One real rollout worker on an in-process queue."""
    queue = InProcessQueue()
    stop = asyncio.Event()
    async with RewardClient(reward_url) as grader:
        config = WorkerConfig(replica_id="w", block_ms=50, heartbeat_s=0.2)
        task = asyncio.create_task(
            RolloutWorker(queue, TorchEngine(model_dir), grader, config).run(stop)
        )
        try:
            await wait_for_replicas(queue, 0, 1, timeout=20)
            yield queue
        finally:
            stop.set()
            await task


def _opts(job_size: int) -> JobOptions:
    return JobOptions(job_size=job_size, progress=False)


async def test_generate_jobs_draw_independent_reproducible_streams(
    coin_model_dir: Path, reward_url: str
) -> None:
    sp = SamplingParams(temperature=1.0, max_tokens=12, seed=3)
    runs = {}
    async with serving(coin_model_dir, reward_url) as queue:
        for name, size in [("one", 1), ("again", 1), ("pairs", 2), ("whole", 4)]:
            outs = await run_generate_jobs(
                queue, PROMPTS, version=0, n=8, sampling=sp, options=_opts(size)
            )
            runs[name] = [[c.token_ids for c in per] for per in outs]
    # every prompt is at local index 0 of its own job, yet their samples differ
    assert len({str(per) for per in runs["one"]}) == len(PROMPTS)
    assert runs["again"] == runs["one"]  # the same request reproduces exactly
    assert runs["pairs"] == runs["whole"] == runs["one"]  # job_size changes no sample


async def test_value_jobs_draw_independent_reproducible_streams(
    coin_model_dir: Path, reward_url: str
) -> None:
    """After '#### ' a continuation returns 1 only for '7' then EOS (p = 1/4)."""
    items = [ValueItem(prompt=p, partial_response="#### ", gold="7") for p in PROMPTS]
    sp = SamplingParams(temperature=1.0, max_tokens=8, seed=5)
    runs = {}
    async with serving(coin_model_dir, reward_url) as queue:
        for name, size in [("one", 1), ("again", 1), ("whole", 4)]:
            values = await run_value_jobs(
                queue, items, version=0, k=32, sampling=sp, options=_opts(size)
            )
            runs[name] = [v.returns for v in values]
    assert len({tuple(r) for r in runs["one"]}) == len(items)
    assert runs["again"] == runs["one"] == runs["whole"]
    assert all(0 < sum(r) < len(r) for r in runs["one"])
