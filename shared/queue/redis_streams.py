"""Redis Streams :class:`~shared.queue.base.JobQueue` (redis-py asyncio).

Keys (all under ``prefix``): ``jobs:v<N>`` (a stream per policy version, consumer group
``workers``), ``result:<job_id>`` (``SET NX EX``: the first result wins; ``release_results``
shortens it to ``read_ttl_s`` or sets an empty marker), ``weights:latest`` and the pub/sub
channel ``weights``, ``replica:<id>`` (heartbeat, ``SET PX``) indexed by the sorted set
``replicas``. ``prune_consumers`` is one Lua script per stream (``XINFO CONSUMERS``, then
``XGROUP DELCONSUMER`` of each idle consumer without pending entries or heartbeat): atomic,
so a consumer that reads a job in the meantime is never deleted with it (the script reads
``replica:<id>`` keys it is not given: single-instance Redis, not Cluster).

Every command is retried on connection errors until ``reconnect_timeout_s`` passes, so a
Redis restart (append-only file on) costs time, not work. Retrying ``XADD`` after a lost
reply may enqueue a job twice; that is harmless because results are stored once per job id.
Refused credentials are not retried: they raise :class:`RedisAuthError` at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ResponseError

from shared.queue.base import (
    DEFAULT_READ_TTL_S,
    DEFAULT_RESULT_TTL_S,
    Delivery,
    format_delivery_id,
    parse_delivery_id,
)
from shared.queue.redis_auth import (
    REFUSED,
    TRANSIENT,
    RedisAuthError,
)
from shared.schemas import Job, JobResult, ReplicaHeartbeat, WeightsAnnouncement

log = logging.getLogger(__name__)

T = TypeVar("T")
GROUP = "workers"
_TRANSIENT, _REFUSED = TRANSIENT, REFUSED
# KEYS[1] stream; ARGV: group, min idle ms, replica key prefix. Returns the deleted names.
_PRUNE_CONSUMERS = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
local gone = {}
if not ok then return gone end
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if tonumber(f['pending']) == 0 and tonumber(f['idle']) >= tonumber(ARGV[2])
      and redis.call('EXISTS', ARGV[3] .. f['name']) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    table.insert(gone, f['name'])
  end
end
return gone
"""


class RedisQueue:
    """A :class:`JobQueue` on Redis Streams with consumer groups."""

    def __init__(
        self,
        url: str,
        prefix: str = "vineppo:",
        result_ttl_s: float = DEFAULT_RESULT_TTL_S,
        read_ttl_s: float = DEFAULT_READ_TTL_S,
        reconnect_timeout_s: float = 60.0,
        poll_min_s: float = 0.0005,
        poll_max_s: float = 0.02,
    ):
        self.poll_min_s, self.poll_max_s = poll_min_s, poll_max_s
        self.prefix = prefix
        self.result_ttl_s = result_ttl_s
        self.read_ttl_s = read_ttl_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self._url = url
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            health_check_interval=5,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        self._groups: set[int] = set()

    # -- keys -------------------------------------------------------------------------
    def _stream(self, version: int) -> str:
        return f"{self.prefix}jobs:v{version}"

    def _result_key(self, job_id: str) -> str:
        return f"{self.prefix}result:{job_id}"

    @property
    def _latest_key(self) -> str:
        return f"{self.prefix}weights:latest"

    @property
    def _channel(self) -> str:
        return f"{self.prefix}weights"

    def _replica_key(self, replica_id: str) -> str:
        return f"{self.prefix}replica:{replica_id}"

    @property
    def _replica_index(self) -> str:
        return f"{self.prefix}replicas"

    # -- plumbing ---------------------------------------------------------------------
    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``, retrying through connection errors for ``reconnect_timeout_s``."""
        deadline = time.monotonic() + self.reconnect_timeout_s
        delay = 0.05
        while True:
            try:
                return await op()
            except _REFUSED as exc:
                raise RedisAuthError(self._url, exc) from None
            except _TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _ensure_group(self, version: int) -> None:
        if version in self._groups:
            return

        async def create() -> None:
            try:
                await self._redis.xgroup_create(self._stream(version), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        await self._call(create)
        self._groups.add(version)

    async def _grouped(self, version: int, op: Callable[[], Awaitable[T]]) -> T:
        """Run a consumer-group command; recreate the group if Redis lost it."""
        await self._ensure_group(version)
        try:
            return await self._call(op)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups.discard(version)
            await self._ensure_group(version)
            return await self._call(op)

    @staticmethod
    def _deliveries(version: int, entries: Any) -> list[Delivery]:
        out: list[Delivery] = []
        for entry_id, fields in entries or []:
            if fields and "job" in fields:
                out.append(
                    (format_delivery_id(version, entry_id), Job.model_validate_json(fields["job"]))
                )
        return out

    # -- jobs -------------------------------------------------------------------------
    async def submit(self, job: Job) -> str:
        await self._ensure_group(job.policy_version)
        body = job.model_dump_json()
        stream = self._stream(job.policy_version)
        return str(await self._call(lambda: self._redis.xadd(stream, {"job": body})))

    async def fetch(
        self, version: int, consumer: str, count: int = 1, block_ms: int = 1000
    ) -> list[Delivery]:
        stream = self._stream(version)
        block = block_ms if block_ms > 0 else None

        async def read() -> Any:
            return await self._redis.xreadgroup(
                GROUP, consumer, {stream: ">"}, count=count, block=block
            )

        try:
            resp = await self._grouped(version, read)
        except ResponseError as exc:
            if "UNBLOCKED" not in str(exc):
                raise
            return []  # the stream was dropped (drop_version) while we waited on it
        if isinstance(resp, dict):  # RESP3
            return self._deliveries(version, next(iter(resp.values()), [[]])[0] if resp else [])
        return self._deliveries(version, resp[0][1] if resp else [])

    async def ack(self, delivery_id: str) -> None:
        version, entry = parse_delivery_id(delivery_id)
        stream = self._stream(version)

        async def ack_and_delete() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, GROUP, entry)
                pipe.xdel(stream, entry)
                await pipe.execute()

        await self._call(ack_and_delete)

    async def reclaim(
        self, version: int, consumer: str, min_idle_ms: int, count: int = 16
    ) -> list[Delivery]:
        stream = self._stream(version)

        async def claim() -> Any:
            return await self._redis.xautoclaim(
                stream, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
            )

        resp = await self._grouped(version, claim)
        entries = resp[1] if len(resp) > 1 else []
        deleted = resp[2] if len(resp) > 2 else []
        if deleted:  # entries deleted while pending: nothing left to serve
            await self._call(lambda: self._redis.xack(stream, GROUP, *deleted))
        return self._deliveries(version, entries)

    async def touch(self, consumer: str, delivery_ids: Sequence[str]) -> None:
        by_version: dict[int, list[str]] = {}
        for delivery_id in delivery_ids:
            version, entry = parse_delivery_id(delivery_id)
            by_version.setdefault(version, []).append(entry)
        for version, entries in by_version.items():
            stream = self._stream(version)

            async def claim(stream: str = stream, entries: list[str] = entries) -> None:
                await self._redis.xclaim(
                    stream,
                    GROUP,
                    consumer,
                    min_idle_time=0,
                    message_ids=list[Any](entries),
                    justid=True,
                )

            await self._call(claim)

    # -- results ----------------------------------------------------------------------
    async def put_result(self, result: JobResult) -> bool:
        key, body = self._result_key(result.job_id), result.model_dump_json()
        ttl = max(1, int(self.result_ttl_s))
        return bool(await self._call(lambda: self._redis.set(key, body, nx=True, ex=ttl)))

    async def get_results(self, job_ids: Sequence[str]) -> dict[str, JobResult]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        keys = [self._result_key(j) for j in ids]
        raw = await self._call(lambda: self._redis.mget(keys))
        return {j: JobResult.model_validate_json(r) for j, r in zip(ids, raw, strict=True) if r}

    async def release_results(self, job_ids: Sequence[str]) -> None:
        keys = [self._result_key(j) for j in dict.fromkeys(job_ids)]
        if not keys:
            return
        ttl = max(1, int(self.read_ttl_s))

        async def release() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.expire(key, ttl)  # a stored result: read_ttl_s more
                    pipe.set(key, "", nx=True, ex=ttl)  # none yet: a marker (get skips it)
                await pipe.execute()

        await self._call(release)

    async def wait_results(self, job_ids: Sequence[str], timeout_s: float) -> dict[str, JobResult]:
        deadline = time.monotonic() + timeout_s
        found: dict[str, JobResult] = {}
        wanted = list(dict.fromkeys(job_ids))
        pause = self.poll_min_s
        while True:
            missing = [j for j in wanted if j not in found]
            t0 = time.monotonic()
            new = await self.get_results(missing)
            cost = time.monotonic() - t0
            found.update(new)
            left = deadline - time.monotonic()
            if len(found) == len(wanted) or left <= 0:
                return found
            # poll fast while results flow, back off to poll_max_s while nothing comes; never
            # spend more than ~1/4 of the time polling (an MGET of many ids is not free)
            pause = self.poll_min_s if new else min(pause * 1.5, self.poll_max_s)
            await asyncio.sleep(min(max(pause, 3 * cost), left))

    async def depth(self, version: int | None = None) -> int:
        if version is not None:
            stream = self._stream(version)
            return int(await self._call(lambda: self._redis.xlen(stream)))

        async def total() -> int:
            n = 0
            async for key in self._redis.scan_iter(match=f"{self.prefix}jobs:v*", _type="stream"):
                n += int(await self._redis.xlen(key))
            return n

        return await self._call(total)

    async def drop_version(self, version: int) -> None:
        stream = self._stream(version)
        await self._call(lambda: self._redis.delete(stream))
        self._groups.discard(version)

    # -- weights ----------------------------------------------------------------------
    async def publish_weights(self, announcement: WeightsAnnouncement) -> None:
        body = announcement.model_dump_json()

        async def publish() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._latest_key, body)
                pipe.publish(self._channel, body)
                await pipe.execute()

        await self._call(publish)

    async def latest_weights(self) -> WeightsAnnouncement | None:
        raw = await self._call(lambda: self._redis.get(self._latest_key))
        return WeightsAnnouncement.model_validate_json(raw) if raw else None

    async def subscribe_weights(self) -> AsyncIterator[WeightsAnnouncement]:
        last = (-1, -1)  # (generation, version) of the last one yielded
        delay = 0.05
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                latest = await self.latest_weights()  # after subscribing: nothing is missed
                delay = 0.05
                if latest is not None and latest.order > last:
                    last = latest.order
                    yield latest
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    ann = WeightsAnnouncement.model_validate_json(msg["data"])
                    if ann.order > last:
                        last = ann.order
                        yield ann
            except _REFUSED as exc:
                raise RedisAuthError(self._url, exc) from None
            except _TRANSIENT as exc:
                log.warning("weights subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            finally:
                await pubsub.aclose()

    # -- replicas ---------------------------------------------------------------------
    async def heartbeat(self, beat: ReplicaHeartbeat, ttl_s: float) -> None:
        key, body = self._replica_key(beat.replica_id), beat.model_dump_json()
        ttl_ms = max(1, int(ttl_s * 1000))
        expires = time.time() + ttl_s

        async def beat_once() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(key, body, px=ttl_ms)
                pipe.zadd(self._replica_index, {beat.replica_id: expires})
                await pipe.execute()

        await self._call(beat_once)

    async def list_replicas(self) -> list[ReplicaHeartbeat]:
        # The index (a sorted set: id -> expiry) keeps this O(replicas), not O(keyspace); the
        # TTL'd keys stay the truth. Members long expired (beyond clock skew) are trimmed.
        index = self._replica_index

        async def read() -> list[Any]:
            await self._redis.zremrangebyscore(index, "-inf", time.time() - 3600)
            ids = sorted(str(i) for i in await self._redis.zrange(index, 0, -1))
            if not ids:
                return []
            return list(await self._redis.mget([self._replica_key(i) for i in ids]))

        raw = await self._call(read)
        beats = [ReplicaHeartbeat.model_validate_json(r) for r in raw if r]
        return sorted(beats, key=lambda b: b.replica_id)

    async def prune_consumers(self, version: int, min_idle_ms: int) -> list[str]:
        stream, prefix = self._stream(version), self._replica_key("")

        async def prune() -> Any:
            return await self._redis.eval(
                _PRUNE_CONSUMERS, 1, stream, GROUP, max(0, int(min_idle_ms)), prefix
            )

        return sorted(str(name) for name in await self._call(prune) or [])

    async def close(self) -> None:
        await self._redis.aclose()
