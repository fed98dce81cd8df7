"""The JobQueue contract, run against both backends (in-process and a real redis-server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from shared.queue import JobQueue, make_queue, parse_delivery_id
from shared.schemas import (
    GenerateRequest,
    Job,
    JobResult,
    ReplicaHeartbeat,
    WeightsAnnouncement,
)


@pytest.fixture(params=["memory", "redis"])
async def queue(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[JobQueue]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    q = make_queue(url, prefix=key_prefix)
    yield q
    await q.close()


def job(version: int = 0, prompt: str = "1+1=") -> Job:
    return Job(kind="generate", policy_version=version, generate=GenerateRequest(prompts=[prompt]))


def result(job_id: str, worker: str = "w", version: int = 0) -> JobResult:
    return JobResult(job_id=job_id, policy_version=version, worker_id=worker, ok=True)


async def test_submit_fetch_ack_in_order(queue: JobQueue) -> None:
    jobs = [job(prompt=f"p{i}") for i in range(5)]
    for j in jobs:
        await queue.submit(j)
    assert await queue.depth(0) == 5
    got = await queue.fetch(0, "w1", count=3, block_ms=100)
    got += await queue.fetch(0, "w2", count=10, block_ms=100)
    assert [j.job_id for _, j in got] == [j.job_id for j in jobs]
    assert await queue.fetch(0, "w1", count=1, block_ms=50) == []
    assert await queue.depth(0) == 5  # delivered but not acked
    for delivery_id, _ in got:
        assert parse_delivery_id(delivery_id)[0] == 0
        await queue.ack(delivery_id)
    assert await queue.depth(0) == 0


async def test_fetch_only_sees_its_version(queue: JobQueue) -> None:
    await queue.submit(job(version=2))
    assert await queue.fetch(1, "w1", count=5, block_ms=50) == []
    got = await queue.fetch(2, "w1", count=5, block_ms=50)
    assert [j.policy_version for _, j in got] == [2]
    assert await queue.depth() == 1


async def test_fetch_blocks_until_a_job_arrives(queue: JobQueue) -> None:
    async def later() -> None:
        await asyncio.sleep(0.2)
        await queue.submit(job())

    task = asyncio.create_task(later())
    t0 = time.monotonic()
    got = await queue.fetch(0, "w1", count=1, block_ms=3000)
    await task
    assert len(got) == 1 and 0.15 < time.monotonic() - t0 < 2.5


async def test_reclaim_takes_idle_deliveries_only(queue: JobQueue) -> None:
    await queue.submit(job(prompt="a"))
    await queue.submit(job(prompt="b"))
    (da, ja), (db, _jb) = await queue.fetch(0, "dead", count=2, block_ms=100)
    assert await queue.reclaim(0, "alive", min_idle_ms=10_000) == []
    await asyncio.sleep(0.3)
    await queue.touch("dead", [db])  # b's worker is still working on it
    claimed = await queue.reclaim(0, "alive", min_idle_ms=200)
    assert [j.job_id for _, j in claimed] == [ja.job_id]
    assert claimed[0][0] == da  # same delivery, new owner
    await queue.ack(claimed[0][0])
    await queue.ack(db)
    assert await queue.depth(0) == 0
    assert await queue.reclaim(0, "alive", min_idle_ms=0) == []


async def test_first_result_wins(queue: JobQueue) -> None:
    assert await queue.put_result(result("j1", worker="first"))
    assert not await queue.put_result(result("j1", worker="second"))
    got = await queue.get_results(["j1", "nope"])
    assert list(got) == ["j1"] and got["j1"].worker_id == "first"


async def test_wait_results_returns_when_all_arrive_or_times_out(queue: JobQueue) -> None:
    async def produce() -> None:
        for i in range(3):
            await asyncio.sleep(0.05)
            await queue.put_result(result(f"r{i}"))

    task = asyncio.create_task(produce())
    got = await queue.wait_results(["r0", "r1", "r2"], timeout_s=5)
    await task
    assert sorted(got) == ["r0", "r1", "r2"]
    t0 = time.monotonic()
    partial = await queue.wait_results(["r0", "missing"], timeout_s=0.3)
    assert list(partial) == ["r0"] and time.monotonic() - t0 >= 0.25


async def test_weights_latest_and_subscription(queue: JobQueue) -> None:
    assert await queue.latest_weights() is None
    await queue.publish_weights(WeightsAnnouncement(version=1, path="/ckpt/policy-v1"))
    sub = queue.subscribe_weights()
    first = await asyncio.wait_for(anext(sub), 5)
    assert first.version == 1  # the latest is replayed on subscribe
    await queue.publish_weights(WeightsAnnouncement(version=2, path="/ckpt/policy-v2"))
    second = await asyncio.wait_for(anext(sub), 5)
    assert second.version == 2 and second.path == "/ckpt/policy-v2"
    # same trainer: an older version is not passed on; a later trainer (a resumed run) is,
    # even with a lower version
    await queue.publish_weights(WeightsAnnouncement(version=1, path="/ckpt/policy-v1"))
    await queue.publish_weights(WeightsAnnouncement(version=1, path="/r/policy-v1", generation=7))
    third = await asyncio.wait_for(anext(sub), 5)
    assert (third.generation, third.version, third.path) == (7, 1, "/r/policy-v1")
    await sub.aclose()  # type: ignore[attr-defined]
    latest = await queue.latest_weights()
    assert latest is not None and latest.order == (7, 1)


async def test_heartbeats_expire(queue: JobQueue) -> None:
    await queue.heartbeat(ReplicaHeartbeat(replica_id="b", state="ready", loaded_version=3), 0.3)
    await queue.heartbeat(ReplicaHeartbeat(replica_id="a", state="ready"), 30)
    live = await queue.list_replicas()
    assert [r.replica_id for r in live] == ["a", "b"] and live[1].loaded_version == 3
    await asyncio.sleep(0.5)
    assert [r.replica_id for r in await queue.list_replicas()] == ["a"]


async def test_drop_version(queue: JobQueue) -> None:
    await queue.submit(job(version=0))
    await queue.drop_version(0)
    assert await queue.depth(0) == 0
    assert await queue.fetch(0, "w", block_ms=50) == []


async def test_a_fetch_waiting_on_a_dropped_version_returns_nothing(queue: JobQueue) -> None:
    # A trainer prunes a version while a replica still blocks on its stream (a resumed run
    # rolling replicas back drops the newer version they serve): the wait ends empty-handed,
    # it does not raise (Redis unblocks XREADGROUP with "UNBLOCKED ... no longer exists").
    await queue.submit(job(version=2))
    got = await queue.fetch(2, "w", block_ms=50)
    waiting = asyncio.create_task(queue.fetch(2, "w", block_ms=2000))
    await asyncio.sleep(0.2)
    await queue.drop_version(2)
    assert len(got) == 1 and await waiting == []
