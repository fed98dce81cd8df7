"""The soak bench's chaos: SIGKILL of a rollout replica (as soon as it holds a job) and its
restart, SIGKILL of redis-server and its restart on the same port and directory. A mixin of
``bench.soak.Soak``, whose stack, clock, events and errors it uses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from bench.soak_stack import GROUP, SoakRecord, replica_id, stream, wait_redis, wait_replica
from shared.queue import JobQueue
from shared.schemas import Job

if TYPE_CHECKING:
    from bench.soak_stack import Proc


class Chaos(SoakRecord):
    """Replica and Redis kills on ``--kill-every-s`` and at ``--redis-kill-at-s``."""

    redis_port: int
    restarts: list[asyncio.Task[None]]

    def version(self) -> int:  # the Soak's
        raise NotImplementedError

    def start_replica(self, role: str) -> Proc:  # the Soak's
        raise NotImplementedError

    def start_redis(self) -> Proc:  # the Soak's
        raise NotImplementedError

    async def inflight(self, rid: str) -> list[str]:
        """Job ids the consumer ``rid`` holds (delivered, not acked)."""
        r = Redis(port=self.redis_port, decode_responses=True, socket_timeout=2)
        try:
            key = stream(self.version())
            pending = await r.xpending_range(key, GROUP, "-", "+", 16, consumername=rid)
            out = []
            for p in pending:
                for _, fields in await r.xrange(key, p["message_id"], p["message_id"]):
                    out.append(Job.model_validate_json(fields["job"]).job_id)
            return out
        except Exception as exc:
            return [f"? ({type(exc).__name__})"]
        finally:
            await r.aclose()

    async def kill_replica(self, role: str, queue: JobQueue) -> None:
        victim = self.stack.live(role)
        rid = replica_id(victim)
        t_due = self.clock.now()
        deadline = time.monotonic() + self.args.kill_wait_busy_s
        while not (held := await self.inflight(rid)) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # wait (a little) for a job to be in flight on it
        t = self.clock.now()
        await self.stack.kill9(victim)
        new = self.start_replica(role)
        event = {
            "t": round(t, 2),
            "what": f"SIGKILL {victim.key}",
            "waited_for_a_job_s": round(t - t_due, 2),
            "replica_id": rid,
            "inflight_jobs": held,
            "restarted": new.key,
        }
        self.events.append(event)
        print(
            f"[{t:6.1f}s] SIGKILL {victim.key} (in flight: {held or 'none'}); starting {new.key}",
            flush=True,
        )

        async def ready() -> None:
            try:
                await wait_replica(queue, new, self.version)
                new.ready_after_s = self.clock.now() - new.started
                event["restart_ready_s"] = round(new.ready_after_s, 2)
            except Exception as exc:
                self.errors.append(f"{new.key}: {exc}")
                event["restart_error"] = str(exc)

        self.restarts.append(asyncio.create_task(ready()))

    async def kill_redis(self, queue: JobQueue) -> None:
        victim = self.stack.live("redis")
        t = self.clock.now()
        await self.stack.kill9(victim)
        print(f"[{t:6.1f}s] SIGKILL {victim.key}", flush=True)
        await asyncio.sleep(self.args.redis_down_s)
        new = self.start_redis()
        await wait_redis(self.redis_port)
        up = self.clock.now()
        new.ready_after_s = up - new.started
        event: dict[str, Any] = {
            "t": round(t, 2),
            "what": f"SIGKILL {victim.key}",
            "down_s": round(up - t, 2),
            "restarted": new.key,
        }
        self.events.append(event)
        # both replicas beating again: a heartbeat written after the restart (the keys of
        # the beats before the kill came back with the append-only file)
        wall_up, deadline = time.time(), time.monotonic() + 60
        while time.monotonic() < deadline:
            ids = {replica_id(self.stack.live(role)) for role in ("replica-a", "replica-b")}
            with contextlib.suppress(Exception):
                beats = [b for b in await queue.list_replicas() if b.replica_id in ids]
                if len(beats) == 2 and all(b.ts > wall_up for b in beats):
                    event["replicas_beat_after_s"] = round(self.clock.now() - t, 2)
                    break
            await asyncio.sleep(0.1)
        print(f"[{up:6.1f}s] {new.key} up after {up - t:.2f}s", flush=True)

    async def chaos(self, queue: JobQueue, end: float) -> None:
        a = self.args
        plan: list[tuple[float, str]] = []
        t, i = a.kill_every_s, 0
        while a.kill_every_s > 0 and t < end:
            plan.append((t, ("replica-a", "replica-b")[i % 2]))
            t, i = t + a.kill_every_s, i + 1
        redis_at = a.redis_kill_at_s
        if redis_at is None:
            step = a.kill_every_s or end
            redis_at = (end / 2 // step) * step + step / 2
        if 0 <= redis_at < end:
            plan.append((redis_at, "redis"))
        for at, what in sorted(plan):
            await asyncio.sleep(max(0.0, at - self.clock.now()))
            if what == "redis":
                await self.kill_redis(queue)
            else:
                await self.kill_replica(what, queue)
