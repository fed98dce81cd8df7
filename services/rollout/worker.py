"""The rollout worker loop: take jobs off the queue, serve them with the loaded policy.

A worker (one per rollout replica) serves only jobs of the policy version its engine has
loaded: it reads the job stream of exactly that version. When a newer version is announced
(pub/sub, with ``weights:latest`` replayed on subscribe) it stops taking work, loads the
new weights, then reads the new version's stream. So a job for version N is never served by
a worker holding N-1; a job for a version newer than any loaded one waits in its stream.

Jobs of an OLDER version than the one loaded are not served (their stream is no longer
read): answering them with newer weights would stamp a wrong policy on the result, and the
trainer never enqueues stale work. A trainer that did would see those jobs time out.

Announced weights go through the same gate as ``POST /v1/weights`` (``policy.PolicyGate``:
one lock per engine around check, read and swap) and the same resolver
(``engine.weights.read_weights``): only ``checkpoint_root / <last path component>``, only
the shards the announcement names, each read once and checked against its SHA-256, finite
values only; an announcement without digests, or older than the version served, is refused
— unless it comes from a later trainer generation (a resumed run rolling replicas back to its
checkpoint's version; see ``WeightsAnnouncement.generation``). A later generation
re-announcing the version served is adopted without a load when its digests are those of the
weights served, and loaded otherwise.

A failed load leaves the worker in state ``failed`` (heartbeat names the version and the
error); it serves nothing until a newer version is announced, which it tries to load. An
announcement overtaken by an HTTP push of a newer version is skipped, not a failure.

Consumer-group hygiene: every ``consumer_gc_s`` the worker removes the consumers of its
version's group that are idle past ``consumer_idle_ms``, hold no pending job and have no live
heartbeat (``JobQueue.prune_consumers``): replicas that died and were replaced.

Delivery is at-least-once (a dead worker's jobs are reclaimed by another one after
``claim_idle_ms``); a live worker keeps its in-flight deliveries fresh with every heartbeat.
The worker never stores a second result for a job (``put_result`` is first-wins).

Started by ``replica.py`` from ``RolloutSettings``: in the app's lifespan (``vineppo serve
rollout`` with ``redis_url``) or alone (``vineppo serve rollout --worker-only``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from services.rollout.engine.base import Engine, EngineDead
from services.rollout.engine.weights import (
    VerifiedWeights,
    WeightsPathError,
    WeightsRefused,
    read_weights,
)
from services.rollout.policy import PolicyGate
from services.rollout.value_cache import ValueCache
from services.rollout.values import Grader, estimate_values
from shared.queue import Delivery, JobQueue
from shared.schemas import (
    GenerateResult,
    Job,
    JobResult,
    ReplicaHeartbeat,
    ValueResult,
    WeightsAnnouncement,
)

log = logging.getLogger(__name__)


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerConfig:
    """How a worker polls, beats and reclaims."""

    replica_id: str = field(default_factory=default_replica_id)
    batch: int = 1  # jobs taken per fetch
    block_ms: int = 1000  # longest wait in one fetch (a weights announcement cuts it short)
    heartbeat_s: float = 1.0  # beat period; also refreshes in-flight deliveries
    heartbeat_ttl_s: float = 5.0  # a replica silent this long is gone
    claim_idle_ms: int = 10_000  # a delivery idle this long belonged to a dead worker
    checkpoint_root: Path | None = None  # where this replica mounts the checkpoint volume
    # (None: every announced load is refused); largest total size of one policy's shards
    max_weights_bytes: int = 64 * 1024**3
    consumer_gc_s: float = 30.0  # how often dead consumers are removed from the group
    consumer_idle_ms: int = 60_000  # a consumer idle this long, without heartbeat, is dead
    value_cache_entries: int = 4096  # seeded value estimates kept per policy version


class RolloutWorker:
    """One replica's loop over the queue. Use :func:`run_worker`."""

    def __init__(self, queue: JobQueue, engine: Engine, grader: Grader, config: WorkerConfig):
        self.queue, self.engine, self.grader, self.config = queue, engine, grader, config
        self.gate = PolicyGate.of(engine)  # shared with this engine's HTTP pushes
        self.state: str = "starting"
        self.failed_version: int | None = None
        self._failed: tuple[int, int] | None = None  # order of the announcement that failed
        self.generation = 0  # trainer generation of the weights the engine holds
        self.error: str | None = None
        self.served = 0
        self._announced: WeightsAnnouncement | None = None
        self._wake = asyncio.Event()
        self._inflight: set[str] = set()
        self._last_claim = 0.0
        self._last_gc = time.monotonic()

    # 1) weights -------------------------------------------------------------------------
    def _read(self, ann: WeightsAnnouncement) -> VerifiedWeights:
        """The announced shards, read once under the checkpoint root, digests checked.

        The trainer's path is only a name here: the replica mounts the volume at its own
        ``checkpoint_root`` and loads ``root / <last component>`` through the same resolver
        as ``POST /v1/weights`` (confinement after symlinks, safetensors only, size cap).
        """
        if not ann.sha256:
            raise WeightsPathError(
                "announcement carries no shard SHA-256: refused", 403, "forbidden"
            )
        name = PurePosixPath(ann.path.replace("\\", "/")).name or ann.path
        return read_weights(
            self.config.checkpoint_root,
            name,
            max_bytes=self.config.max_weights_bytes,
            sha256=ann.sha256,
        )

    async def _watch_weights(self) -> None:
        async for ann in self.queue.subscribe_weights():
            if self._announced is None or ann.order > self._announced.order:
                self._announced = ann
                self._wake.set()

    def _needs_load(self) -> WeightsAnnouncement | None:
        ann = self._announced
        if ann is None or ann.order <= (self.generation, self.engine.version):
            return None
        if ann.version == self.engine.version and ann.sha256 == self.gate.sha256:
            self.generation = ann.generation  # a resumed trainer re-announces what we hold
            return None
        if ann.version < self.engine.version and ann.generation <= self.generation:
            return None  # never back to an older policy of the same trainer
        if self._failed is not None and ann.order <= self._failed:
            return None
        return ann

    def _load_failed(self, ann: WeightsAnnouncement, exc: Exception) -> None:
        self.state, self.failed_version, self._failed = "failed", ann.version, ann.order
        self.error = f"{type(exc).__name__}: {exc}"
        log.error(
            "replica %s failed to load v%d from %s: %s",
            self.config.replica_id,
            ann.version,
            ann.path,
            self.error,
        )

    async def _load(self, ann: WeightsAnnouncement) -> None:
        self.state = "loading"
        beat = asyncio.create_task(self._beat())  # announce "loading" while the load runs
        t0 = time.perf_counter()
        supersede = ann.generation > self.generation
        try:
            await self.gate.load(
                ann.version, functools.partial(self._read, ann), supersede=supersede
            )
        except WeightsRefused as exc:
            if exc.code == "stale_version":  # an HTTP push loaded a newer version meanwhile
                self.state = "ready"
                log.info("replica %s skips v%d: %s", self.config.replica_id, ann.version, exc)
            else:
                self._load_failed(ann, exc)
        except Exception as exc:
            self._load_failed(ann, exc)
        else:
            self.state, self.failed_version, self.error = "ready", None, None
            self._failed, self.generation = None, ann.generation
            log.info(
                "replica %s loaded v%d in %.3fs",
                self.config.replica_id,
                ann.version,
                time.perf_counter() - t0,
            )
        with contextlib.suppress(Exception):
            await beat
        await self._beat()

    # 2) heartbeats ----------------------------------------------------------------------
    async def _beat(self) -> None:
        version = self.engine.version
        beat = ReplicaHeartbeat(
            replica_id=self.config.replica_id,
            state=self.state,  # type: ignore[arg-type]
            loaded_version=version,
            failed_version=self.failed_version,
            error=self.error,
            queue_depth=await self.queue.depth(version),
            tokens_per_s=self.engine.stats().tokens_per_s,
            model=self.engine.model_name,
        )
        await self.queue.heartbeat(beat, self.config.heartbeat_ttl_s)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                if self._inflight:
                    await self.queue.touch(self.config.replica_id, list(self._inflight))
                await self._beat()
                await self._prune_consumers()
            except Exception:  # a beat must never kill the worker
                log.exception("heartbeat failed")
            await asyncio.sleep(self.config.heartbeat_s)

    async def _prune_consumers(self) -> None:
        """Every ``consumer_gc_s``: drop dead replicas' consumers from this version's group."""
        cfg = self.config
        if time.monotonic() - self._last_gc < cfg.consumer_gc_s:
            return
        self._last_gc = time.monotonic()
        gone = await self.queue.prune_consumers(self.engine.version, cfg.consumer_idle_ms)
        if gone:
            log.info(
                "replica %s removed %d dead consumer(s) of v%d: %s",
                cfg.replica_id,
                len(gone),
                self.engine.version,
                gone,
            )

    # 3) jobs ----------------------------------------------------------------------------
    async def _next_deliveries(self, version: int) -> list[Delivery]:
        cfg = self.config
        now = time.monotonic()
        if (now - self._last_claim) * 1000 >= cfg.claim_idle_ms / 4:
            self._last_claim = now
            claimed = await self.queue.reclaim(version, cfg.replica_id, cfg.claim_idle_ms)
            if claimed:
                log.info("replica %s reclaimed %d idle job(s)", cfg.replica_id, len(claimed))
                return claimed
        fetch = asyncio.create_task(
            self.queue.fetch(
                version, cfg.replica_id, cfg.batch, min(cfg.block_ms, cfg.claim_idle_ms // 4 or 1)
            )
        )
        wake = asyncio.create_task(self._wake.wait())
        done, _ = await asyncio.wait({fetch, wake}, return_when=asyncio.FIRST_COMPLETED)
        wake.cancel()
        if fetch in done:
            return fetch.result()
        # A newer version was announced: stop waiting. Anything Redis handed out in the same
        # instant stays pending and is reclaimed after claim_idle_ms.
        fetch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fetch
        return []

    async def _execute(self, job: Job, version: int) -> JobResult:
        t0 = time.perf_counter()
        rid = self.config.replica_id
        if job.kind == "value" and job.value is not None:
            req = job.value
            values = await estimate_values(
                self.engine,
                self.grader,
                req.items,
                req.k,
                req.sampling,
                stream_offset=req.stream_offset,
                cache=ValueCache.of(self.engine, self.config.value_cache_entries),
                target_se=req.target_se,
            )
            value = ValueResult(values=values, policy_version=version)
            return JobResult(
                job_id=job.job_id,
                policy_version=version,
                worker_id=rid,
                ok=True,
                value=value,
                elapsed_s=time.perf_counter() - t0,
            )
        assert job.generate is not None
        gen = job.generate
        outputs = await self.engine.generate(
            gen.prompts, gen.n, gen.sampling, stream_offset=gen.stream_offset
        )
        result = GenerateResult(outputs=outputs, policy_version=version)
        return JobResult(
            job_id=job.job_id,
            policy_version=version,
            worker_id=rid,
            ok=True,
            generate=result,
            elapsed_s=time.perf_counter() - t0,
        )

    async def _serve(self, delivery_id: str, job: Job) -> None:
        version = self.engine.version
        if job.policy_version != version:  # cannot happen: we read only our version's stream
            log.error(
                "job %s is for v%d, worker holds v%d: left for reclaim",
                job.job_id,
                job.policy_version,
                version,
            )
            return
        if await self.queue.get_results([job.job_id]):  # a reclaimed or re-sent job answered
            log.info("job %s already answered: duplicate dropped", job.job_id)
            await self.queue.ack(delivery_id)
            return
        self._inflight.add(delivery_id)
        try:
            result = await self._execute(job, version)
        except EngineDead as exc:
            # Not the job's fault: no failed result, no ack. The delivery stays pending and
            # another replica reclaims it after claim_idle_ms; this worker stops (run raises).
            log.error(
                "replica %s: %s; job %s left for another replica",
                self.config.replica_id,
                exc,
                job.job_id,
            )
            self.state, self.error = "failed", str(exc)
            raise
        except Exception as exc:
            log.exception("job %s failed", job.job_id)
            result = JobResult(
                job_id=job.job_id,
                policy_version=version,
                worker_id=self.config.replica_id,
                ok=False,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._inflight.discard(delivery_id)
        if not await self.queue.put_result(result):  # another copy of the job id won
            log.info("a result for job %s is already stored: duplicate dropped", job.job_id)
        await self.queue.ack(delivery_id)
        self.served += 1

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or the task is cancelled); raises ``EngineDead`` when
        the engine dies (the job in hand stays pending for another replica)."""
        stop = stop or asyncio.Event()
        self.state = "ready"
        helpers = [
            asyncio.create_task(self._watch_weights()),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        stopper = asyncio.create_task(self._stop_wakes(stop))
        try:
            while not stop.is_set():
                self._wake.clear()
                ann = self._needs_load()
                if ann is not None:
                    await self._load(ann)
                    continue
                if self.state == "failed":  # serve nothing until a newer version arrives
                    await self._wake.wait()
                    continue
                for delivery_id, job in await self._next_deliveries(self.engine.version):
                    await self._serve(delivery_id, job)
        finally:
            await _cancel_all([*helpers, stopper])

    async def _stop_wakes(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again each second: a cancellation that
    lands as a Redis reply arrives can be lost inside the client (Python 3.11's timeouts), and
    the heartbeat loop, which outlives any error, would then keep the worker from ending."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


async def run_worker(
    queue: JobQueue,
    engine: Engine,
    grader: Grader,
    config: WorkerConfig | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run one rollout worker until ``stop`` is set or the task is cancelled.

    The rollout app's lifespan starts it with ``asyncio.create_task(run_worker(...))``.
    """
    await RolloutWorker(queue, engine, grader, config or WorkerConfig()).run(stop)
