"""Long-run hygiene of the queue, both backends (in-process and a real redis-server): results
released by their reader expire after ``read_ttl_s`` (not the day an unread one lives), a late
answer to a released job id is dropped, and dead replicas' consumers leave the group."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared.queue import InProcessQueue, JobQueue
from shared.queue.redis_streams import GROUP, RedisQueue
from shared.schemas import GenerateRequest, Job, JobResult, ReplicaHeartbeat

READ_TTL_S = 1.0


@pytest.fixture(params=["memory", "redis"])
async def queue(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[JobQueue]:
    q: JobQueue
    if request.param == "redis":
        q = RedisQueue(
            request.getfixturevalue("redis_url"), prefix=key_prefix, read_ttl_s=READ_TTL_S
        )
    else:
        q = InProcessQueue(prefix=key_prefix, read_ttl_s=READ_TTL_S)
    yield q
    await q.close()


def job(version: int = 0) -> Job:
    return Job(kind="generate", policy_version=version, generate=GenerateRequest(prompts=["q"]))


def result(job_id: str, worker: str = "w") -> JobResult:
    return JobResult(job_id=job_id, policy_version=0, worker_id=worker, ok=True)


async def test_released_results_expire_and_late_answers_are_dropped(queue: JobQueue) -> None:
    assert await queue.put_result(result("read"))
    assert await queue.put_result(result("unread"))
    await queue.release_results(["read", "abandoned"])
    # still there for read_ttl_s: a reclaimed duplicate of "read" is recognised and dropped
    assert set(await queue.get_results(["read", "unread", "abandoned"])) == {"read", "unread"}
    assert not await queue.put_result(result("read", worker="duplicate"))
    assert not await queue.put_result(result("abandoned", worker="late"))  # nobody waits
    if isinstance(queue, RedisQueue):  # the key's own TTL, not the 24 h of an unread result
        redis = Redis.from_url(queue._url)
        try:
            ttl = await redis.ttl(f"{queue.prefix}result:read")
            unread_ttl = await redis.ttl(f"{queue.prefix}result:unread")
        finally:
            await redis.aclose()
        assert 0 < ttl <= READ_TTL_S and unread_ttl > 3600
    await asyncio.sleep(READ_TTL_S + 0.3)
    assert set(await queue.get_results(["read", "unread", "abandoned"])) == {"unread"}
    assert await queue.put_result(result("abandoned", worker="much later"))  # marker gone too


async def _consumers(queue: JobQueue, version: int) -> set[str] | None:
    """The consumer names Redis holds for ``version`` (None for the in-process backend)."""
    if not isinstance(queue, RedisQueue):
        return None
    redis = Redis.from_url(queue._url, decode_responses=True)
    try:
        rows = await redis.xinfo_consumers(f"{queue.prefix}jobs:v{version}", GROUP)
    finally:
        await redis.aclose()
    return {str(r["name"]) for r in rows}


async def _serve_one(queue: JobQueue, consumer: str) -> None:
    """``consumer`` takes a job and acks it (Redis 7.0 creates a consumer on a delivery)."""
    ((delivery_id, _),) = await queue.fetch(0, consumer, count=1, block_ms=50)
    await queue.ack(delivery_id)


async def test_prune_consumers_removes_dead_idle_consumers_only(queue: JobQueue) -> None:
    for _ in range(4):
        await queue.submit(job())
    held = await queue.fetch(0, "dead-holding", count=1, block_ms=50)  # dies with a job
    await _serve_one(queue, "dead-idle")
    await _serve_one(queue, "live")
    await queue.heartbeat(ReplicaHeartbeat(replica_id="live", state="ready"), ttl_s=30)
    await asyncio.sleep(0.4)
    await _serve_one(queue, "dead-recent")
    everyone = {"dead-holding", "dead-idle", "live", "dead-recent"}
    assert await _consumers(queue, 0) in (None, everyone)
    # idle past 300 ms, no heartbeat, nothing pending: only "dead-idle"
    assert await queue.prune_consumers(0, min_idle_ms=300) == ["dead-idle"]
    assert await queue.prune_consumers(0, min_idle_ms=300) == []
    # once a live replica reclaimed its job, the dead holder goes too
    claimed = await queue.reclaim(0, "live", min_idle_ms=100)
    assert [j.job_id for _, j in claimed] == [j.job_id for _, j in held]
    await asyncio.sleep(0.4)
    assert await queue.prune_consumers(0, min_idle_ms=300) == ["dead-holding", "dead-recent"]
    assert await _consumers(queue, 0) in (None, {"live"})
    assert await queue.prune_consumers(7, min_idle_ms=0) == []  # no such stream: nothing
