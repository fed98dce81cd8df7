"""The rollout work queue: one interface (:class:`JobQueue`), two backends with the same
semantics — Redis Streams (production) and in-process asyncio (embedded default).

    queue = make_queue("redis://127.0.0.1:6379/0")   # or make_queue(None) for in-process
    await queue.submit(job)                            # job.policy_version picks the stream
    for delivery_id, job in await queue.fetch(version, "worker-1", count=4, block_ms=500):
        await queue.put_result(result)                 # first result per job_id wins
        await queue.ack(delivery_id)
"""

from __future__ import annotations

from shared.queue.base import (
    Delivery,
    JobQueue,
    format_delivery_id,
    parse_delivery_id,
)
from shared.queue.memory import InProcessQueue


def make_queue(redis_url: str | None, prefix: str = "vineppo:") -> JobQueue:
    """Redis Streams backend for a URL, the in-process backend for ``None``.

    With a URL, one ``PING`` first: credentials Redis refuses raise ``RedisAuthError`` (a
    ``PermissionError``, one line in the CLI) here, at start-up."""
    if redis_url:
        from shared.queue.redis_auth import check_credentials
        from shared.queue.redis_streams import RedisQueue

        check_credentials(redis_url)
        return RedisQueue(redis_url, prefix=prefix)
    return InProcessQueue(prefix=prefix)


__all__ = [
    "Delivery",
    "InProcessQueue",
    "JobQueue",
    "format_delivery_id",
    "make_queue",
    "parse_delivery_id",
]
