"""Faults with real processes: two ``vineppo serve rollout --worker-only`` subprocesses on a
tiny random model, a real reward service, real redis-servers.

- ``kill -9`` one worker while it holds a job: every job completes once, none lost, none
  duplicated; the reclaim delay is printed.
- Redis restarted (append-only file on) mid-batch: clients reconnect, the batch completes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.trainer.client.jobs import JobOptions, run_jobs, wait_for_replicas
from shared.queue import make_queue
from shared.schemas import Job, SamplingParams, ValueItem, ValueRequest
from tests.services.rollout.tiny import make_tiny_model_dir
from tests.support import RedisProcess

pytestmark = [pytest.mark.server, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
TEXTS = ["Question: 2+3=?\nAnswer: 2+3=5\n#### 5", "Question: 7*6=?\n7*6=42\n#### 42"]
# long random continuations so a job takes a while (≈ 0.2-1 s each on CPU)
SLOW = SamplingParams(temperature=1.0, max_tokens=48, seed=None)
CLAIM_IDLE_MS = 1500


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", vocab_texts=TEXTS)


@contextmanager
def workers(
    ids: list[str], model: Path, redis_url: str, reward_url: str, prefix: str, log_dir: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "VINEPPO_ROLLOUT_QUEUE_PREFIX": prefix,
        "VINEPPO_ROLLOUT_HEARTBEAT_S": "0.25",
        "VINEPPO_ROLLOUT_HEARTBEAT_TTL_S": "1.5",
        "VINEPPO_ROLLOUT_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
    }
    try:
        for rid in ids:
            cmd = [
                sys.executable,
                "-m",
                "services.cli",
                "serve",
                "rollout",
                "--worker-only",
                "--model",
                str(model),
                "--redis-url",
                redis_url,
                "--reward-url",
                reward_url,
            ]
            log = (log_dir / f"{rid}.log").open("wb")
            own = {**env, "VINEPPO_ROLLOUT_REPLICA_ID": rid}
            procs[rid] = subprocess.Popen(cmd, cwd=ROOT, env=own, stdout=log, stderr=log)
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def value_jobs(n: int) -> list[Job]:
    items = [
        ValueItem(prompt=f"Question: {i}+{i}=?\n", partial_response="Answer: ", gold=str(2 * i))
        for i in range(n)
    ]
    return [
        Job(kind="value", policy_version=0, value=ValueRequest(items=[it], k=4, sampling=SLOW))
        for it in items
    ]


async def test_kill_9_one_worker_mid_job_loses_and_duplicates_nothing(
    redis_url: str, key_prefix: str, tiny_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    queue = make_queue(redis_url, prefix=key_prefix)
    raw = Redis.from_url(redis_url, decode_responses=True)
    jobs = value_jobs(16)
    with workers(
        ["w-victim", "w-survivor"], tiny_dir, redis_url, reward_url, key_prefix, tmp_path
    ) as procs:
        await wait_for_replicas(queue, 0, 2, timeout=60)
        batch = asyncio.create_task(run_jobs(queue, jobs, JobOptions(timeout_s=120, poll_s=0.1)))
        # wait until the victim holds a job (pending in the consumer group), then kill -9 it
        stolen: list[str] = []
        while not stolen:
            assert not batch.done(), "batch finished before the victim took a job"
            pending = await raw.xpending_range(
                f"{key_prefix}jobs:v0", "workers", "-", "+", 10, consumername="w-victim"
            )
            stolen = [p["message_id"] for p in pending]
            await asyncio.sleep(0.01)
        victim_job = (await raw.xrange(f"{key_prefix}jobs:v0", stolen[0], stolen[0]))[0][1]
        os.kill(procs["w-victim"].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim_job_id = Job.model_validate_json(victim_job["job"]).job_id
        while not await queue.get_results([victim_job_id]):
            await asyncio.sleep(0.02)
        reclaim_delay = time.monotonic() - killed_at
        results = await asyncio.wait_for(batch, 120)
    print(f"\nreclaim delay after kill -9: {reclaim_delay:.2f}s (claim idle {CLAIM_IDLE_MS} ms)")
    assert procs["w-victim"].returncode == -signal.SIGKILL
    assert len(results) == len(jobs) and all(r.ok for r in results)
    assert len({r.job_id for r in results}) == len(jobs)  # one result per job, none twice
    assert all(r.job_id.endswith("-a0") for r in results)  # the reclaim did it, not a retry
    assert all(r.value is not None and len(r.value.values[0].returns) == 4 for r in results)
    by_id = {r.job_id: r for r in results}
    assert by_id[victim_job_id].worker_id == "w-survivor"
    assert CLAIM_IDLE_MS / 1000 * 0.5 <= reclaim_delay < 30
    assert await queue.depth(0) == 0
    await raw.aclose()
    await queue.close()


async def test_redis_restart_mid_batch_completes_every_job(
    private_redis: RedisProcess, key_prefix: str, tiny_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    queue = make_queue(private_redis.url, prefix=key_prefix)
    jobs = value_jobs(12)
    with workers(["w-1", "w-2"], tiny_dir, private_redis.url, reward_url, key_prefix, tmp_path):
        await wait_for_replicas(queue, 0, 2, timeout=60)
        batch = asyncio.create_task(run_jobs(queue, jobs, JobOptions(timeout_s=120, poll_s=0.1)))
        while True:  # restart once a few results are in and work is still queued
            depth = await queue.depth(0)
            if 0 < depth <= len(jobs) - 3:
                break
            assert not batch.done()
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        await asyncio.to_thread(private_redis.restart)
        print(f"\nredis restarted in {time.monotonic() - t0:.2f}s with {depth} job(s) unacked")
        results = await asyncio.wait_for(batch, 120)
        live = await queue.list_replicas()
    assert len(results) == len(jobs) and all(r.ok for r in results)
    assert len({r.job_id for r in results}) == len(jobs)
    assert {r.worker_id for r in results} <= {"w-1", "w-2"}
    assert {r.replica_id for r in live} == {"w-1", "w-2"}  # both beat again after the restart
    assert await queue.depth(0) == 0
    await queue.close()
