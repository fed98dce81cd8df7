"""The soak bench's weight pushes, the way the trainer's loop makes them between iterations:
every ``--push-every-s`` the load stops taking slots and drains (no job of the old version
may be left: replicas that moved on never read its stream again), ``policy-v<N>/`` is
written atomically under the replicas' checkpoint root (alternately the trained weights and
the same with a little noise), announced with its SHA-256 on the queue, the bench waits
until every live replica beats "ready" at N, then the load resumes on N and the stream of
N - 2 is dropped (``push_policy`` keeps two). Used by bench/soak.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.queue import JobQueue
from shared.schemas import WeightsAnnouncement

if TYPE_CHECKING:
    from bench.soak_load import Load
    from bench.soak_stack import SoakRecord

REPLICAS = ("replica-a", "replica-b")


def write_policy(root: Path, version: int, weights: Path) -> Path:
    """``root/policy-v<version>/model.safetensors``: written to a temporary directory, then
    renamed (a replica never sees half a file under a ``policy-vN`` name)."""
    final = root / f"policy-v{version}"
    tmp = root / f".policy-v{version}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    shutil.copyfile(weights, tmp / "model.safetensors")
    os.rename(tmp, final)
    return final


class Pusher:
    """Pushes a new policy version every ``--push-every-s`` (see the module docstring)."""

    def __init__(self, soak: SoakRecord, load: Load, queue: JobQueue) -> None:
        self.soak, self.load, self.queue = soak, load, queue
        self.root = soak.stack.work / "ckpt"
        self.variants = sorted((soak.model.parent / "variants").glob("*.safetensors"))
        self.generation = time.time_ns() // 1000  # one trainer process: one generation
        self.events: list[dict[str, Any]] = []

    async def run(self, end: float) -> None:
        a = self.soak.args
        if a.push_every_s <= 0:
            return
        t, version = a.push_at_s, 0
        while t < end:
            await asyncio.sleep(max(0.0, t - self.soak.clock.now()))
            version += 1
            await self.push(version)
            t += a.push_every_s

    async def push(self, version: int) -> None:
        clock, load = self.soak.clock, self.load
        t0 = clock.now()
        event: dict[str, Any] = {"t": round(t0, 2), "what": f"push v{version}"}
        self.events.append(event)
        load.open.clear()
        try:
            deadline = time.monotonic() + self.soak.args.push_drain_timeout_s
            while load.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            event["drain_s"], event["left_in_flight"] = round(clock.now() - t0, 2), load.in_flight
            weights = self.variants[version % len(self.variants)]
            path = await asyncio.to_thread(write_policy, self.root, version, weights)
            digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
            ann = WeightsAnnouncement(
                version=version,
                path=str(path),
                generation=self.generation,
                sha256={"model.safetensors": digest},
            )
            t_announce = clock.now()
            await self.queue.publish_weights(ann)
            event["replicas_ready_s"] = await self._replicas_at(version)
            event["announce_to_ready_s"] = round(clock.now() - t_announce, 2)
            load.version = version
        finally:
            load.open.set()
        event["paused_s"] = round(clock.now() - t0, 2)
        if version >= 2:  # nobody serves v-2 any more: its stream goes, as push_policy does
            await self.queue.drop_version(version - 2)
            shutil.rmtree(self.root / f"policy-v{version - 2}", ignore_errors=True)
        print(
            f"[{t0:6.1f}s] push v{version}: paused {event['paused_s']} s "
            f"(drain {event['drain_s']} s, replicas ready after announce "
            f"{event['announce_to_ready_s']} s)",
            flush=True,
        )

    async def _replicas_at(self, version: int, timeout: float = 120.0) -> float | None:
        """Seconds until every live replica process beats "ready" at ``version``."""
        t0, deadline = time.monotonic(), time.monotonic() + timeout
        host = socket.gethostname()
        while time.monotonic() < deadline:
            wanted = {f"{host}-{self.soak.stack.live(role).pid}" for role in REPLICAS}
            try:
                beats = {b.replica_id: b for b in await self.queue.list_replicas()}
            except Exception:  # Redis restarting: ask again
                beats = {}
            if all(
                r in beats and (beats[r].state, beats[r].loaded_version) == ("ready", version)
                for r in wanted
            ):
                return round(time.monotonic() - t0, 2)
            await asyncio.sleep(0.05)
        self.soak.errors.append(f"replicas not ready at v{version} after {timeout:.0f} s")
        return None
