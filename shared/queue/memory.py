"""In-process :class:`~shared.queue.base.JobQueue` on asyncio: the embedded default.

Same semantics as the Redis Streams backend (per-version streams, pending deliveries,
reclaim by idle time, first-result-wins with a TTL, released results and markers, consumer
pruning, heartbeats with a TTL), for one event loop in one process. Expired results are
swept every ``_SWEEP_EVERY`` stores, so an unread result does not outlive its TTL in memory.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from shared.queue.base import (
    DEFAULT_READ_TTL_S,
    DEFAULT_RESULT_TTL_S,
    Delivery,
    format_delivery_id,
    parse_delivery_id,
)
from shared.schemas import Job, JobResult, ReplicaHeartbeat, WeightsAnnouncement


@dataclass
class _Pending:
    consumer: str
    delivered_at: float  # time.monotonic()


_SWEEP_EVERY = 256


@dataclass
class _Stream:
    jobs: OrderedDict[str, Job] = field(default_factory=OrderedDict)  # every un-acked entry
    unread: list[str] = field(default_factory=list)
    pending: dict[str, _Pending] = field(default_factory=dict)
    consumers: dict[str, float] = field(default_factory=dict)  # name -> last seen (monotonic)


class InProcessQueue:
    """A :class:`JobQueue` held in memory; use from one event loop."""

    def __init__(
        self,
        prefix: str = "vineppo:",
        result_ttl_s: float = DEFAULT_RESULT_TTL_S,
        read_ttl_s: float = DEFAULT_READ_TTL_S,
    ):
        self.prefix = prefix
        self.result_ttl_s = result_ttl_s
        self.read_ttl_s = read_ttl_s
        self._streams: dict[int, _Stream] = {}
        self._seq = itertools.count(1)
        # job id -> (result, or None for the marker of a released id, expiry)
        self._results: dict[str, tuple[JobResult | None, float]] = {}
        self._stores = 0
        self._replicas: dict[str, tuple[ReplicaHeartbeat, float]] = {}
        self._latest: WeightsAnnouncement | None = None
        self._subscribers: list[asyncio.Queue[WeightsAnnouncement]] = []
        self._changed = asyncio.Condition()

    def _stream(self, version: int) -> _Stream:
        return self._streams.setdefault(version, _Stream())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def submit(self, job: Job) -> str:
        entry = f"{int(time.time() * 1000)}-{next(self._seq)}"
        stream = self._stream(job.policy_version)
        stream.jobs[entry] = job.model_copy(deep=True)
        stream.unread.append(entry)
        await self._notify()
        return entry

    async def fetch(
        self, version: int, consumer: str, count: int = 1, block_ms: int = 1000
    ) -> list[Delivery]:
        deadline = time.monotonic() + max(block_ms, 0) / 1000
        stream = self._stream(version)
        stream.consumers[consumer] = time.monotonic()
        async with self._changed:
            while not stream.unread:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=left)
                except TimeoutError:
                    return []
            taken, stream.unread = stream.unread[:count], stream.unread[count:]
            now = stream.consumers[consumer] = time.monotonic()
            for entry in taken:
                stream.pending[entry] = _Pending(consumer, now)
            return [(format_delivery_id(version, e), stream.jobs[e].model_copy()) for e in taken]

    async def ack(self, delivery_id: str) -> None:
        version, entry = parse_delivery_id(delivery_id)
        stream = self._stream(version)
        stream.pending.pop(entry, None)
        stream.jobs.pop(entry, None)

    async def reclaim(
        self, version: int, consumer: str, min_idle_ms: int, count: int = 16
    ) -> list[Delivery]:
        stream = self._stream(version)
        now = stream.consumers[consumer] = time.monotonic()
        out: list[Delivery] = []
        for entry, p in stream.pending.items():
            if len(out) >= count:
                break
            if (now - p.delivered_at) * 1000 >= min_idle_ms:
                p.consumer, p.delivered_at = consumer, now
                out.append((format_delivery_id(version, entry), stream.jobs[entry].model_copy()))
        return out

    async def touch(self, consumer: str, delivery_ids: Sequence[str]) -> None:
        now = time.monotonic()
        for delivery_id in delivery_ids:
            version, entry = parse_delivery_id(delivery_id)
            stream = self._stream(version)
            stream.consumers[consumer] = now
            p = stream.pending.get(entry)
            if p is not None and p.consumer == consumer:
                p.delivered_at = now

    def _entry(self, job_id: str) -> tuple[JobResult | None, float] | None:
        item = self._results.get(job_id)
        if item is not None and item[1] < time.monotonic():
            del self._results[job_id]
            return None
        return item

    def _live_result(self, job_id: str) -> JobResult | None:
        item = self._entry(job_id)
        return None if item is None else item[0]

    def _sweep(self) -> None:
        self._stores += 1
        if self._stores % _SWEEP_EVERY == 0:
            now = time.monotonic()
            self._results = {j: r for j, r in self._results.items() if r[1] >= now}

    async def put_result(self, result: JobResult) -> bool:
        if self._entry(result.job_id) is not None:  # a result, or the marker of a released id
            return False
        self._sweep()
        expires = time.monotonic() + self.result_ttl_s
        self._results[result.job_id] = (result.model_copy(deep=True), expires)
        await self._notify()
        return True

    async def release_results(self, job_ids: Sequence[str]) -> None:
        expires = time.monotonic() + self.read_ttl_s
        for job_id in dict.fromkeys(job_ids):
            item = self._entry(job_id)
            self._results[job_id] = (None if item is None else item[0], expires)
            self._sweep()

    async def get_results(self, job_ids: Sequence[str]) -> dict[str, JobResult]:
        found = {j: self._live_result(j) for j in job_ids}
        return {j: r.model_copy(deep=True) for j, r in found.items() if r is not None}

    async def wait_results(self, job_ids: Sequence[str], timeout_s: float) -> dict[str, JobResult]:
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while True:
                found = await self.get_results(job_ids)
                left = deadline - time.monotonic()
                if len(found) == len(set(job_ids)) or left <= 0:
                    return found
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=left)
                except TimeoutError:
                    return await self.get_results(job_ids)

    async def depth(self, version: int | None = None) -> int:
        if version is not None:
            return len(self._stream(version).jobs)
        return sum(len(s.jobs) for s in self._streams.values())

    async def drop_version(self, version: int) -> None:
        self._streams.pop(version, None)

    async def publish_weights(self, announcement: WeightsAnnouncement) -> None:
        self._latest = announcement.model_copy()
        for q in self._subscribers:
            q.put_nowait(announcement.model_copy())
        await self._notify()

    async def latest_weights(self) -> WeightsAnnouncement | None:
        return None if self._latest is None else self._latest.model_copy()

    async def subscribe_weights(self) -> AsyncIterator[WeightsAnnouncement]:
        q: asyncio.Queue[WeightsAnnouncement] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            last = (-1, -1)
            if self._latest is not None:
                last = self._latest.order
                yield self._latest.model_copy()
            while True:
                ann = await q.get()
                if ann.order > last:
                    last = ann.order
                    yield ann
        finally:
            self._subscribers.remove(q)

    async def heartbeat(self, beat: ReplicaHeartbeat, ttl_s: float) -> None:
        self._replicas[beat.replica_id] = (beat.model_copy(), time.monotonic() + ttl_s)

    async def list_replicas(self) -> list[ReplicaHeartbeat]:
        now = time.monotonic()
        live = {k: v for k, v in self._replicas.items() if v[1] >= now}
        self._replicas = live
        return [live[k][0].model_copy() for k in sorted(live)]

    async def prune_consumers(self, version: int, min_idle_ms: int) -> list[str]:
        stream = self._streams.get(version)
        if stream is None:
            return []
        now = time.monotonic()
        live = {b.replica_id for b in await self.list_replicas()}
        owners = {p.consumer for p in stream.pending.values()}
        gone = sorted(
            name
            for name, seen in stream.consumers.items()
            if (now - seen) * 1000 >= min_idle_ms and name not in owners and name not in live
        )
        for name in gone:
            del stream.consumers[name]
        return gone

    async def close(self) -> None:
        return None
