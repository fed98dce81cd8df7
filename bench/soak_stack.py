"""The soak bench's processes: a private redis-server, the reward service and rollout
replicas as real child processes (own session, killed with their group, SIGKILL when the bench
dies), the waits that tell when each is up, and ``SoakRecord`` (what a soak run records).
Used by bench/soak.py."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from shared.queue import JobQueue  # noqa: E402

if TYPE_CHECKING:
    import argparse

PREFIX = "vineppo:"  # the default prefix: `vineppo serve rollout --worker-only` has no flag
GROUP = "workers"


def stream(version: int) -> str:
    """The job stream of one policy version."""
    return f"{PREFIX}jobs:v{version}"


COMPOSE_FLAGS = ("--appendonly", "yes", "--appendfsync", "everysec")  # docker-compose.yml
MB = 1024 * 1024
# what the replicas log (format "<time> LEVEL logger: message"), counted over every generation
LOG_MARKS = {
    "duplicate_dropped": "duplicate dropped",
    "redis_unavailable_retries": "redis unavailable",
    "weights_resubscribed": "resubscribing",
    "heartbeat_failed": "heartbeat failed",
    "job_failed": "ERROR services.rollout.worker: job ",
    "traceback": "Traceback",
}
RECLAIMED = re.compile(r"reclaimed (\d+) idle job")


# -- processes -------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the child: SIGKILL when the bench process dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    """One child process (its own session, so its whole group can be killed)."""

    role: str  # "redis" | "reward" | "replica-a" | "replica-b"
    gen: int
    popen: subprocess.Popen[bytes]
    started: float  # bench clock (s since the load started; negative before)
    log: Path
    ended: float | None = None
    end: str = ""  # how it ended: "sigkill" | "stopped"
    ready_after_s: float | None = None
    rss: list[tuple[float, float]] = field(default_factory=list)  # (t, MB) of the whole tree

    @property
    def key(self) -> str:
        return f"{self.role}#{self.gen}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class Stack:
    """Every child this bench started; :meth:`close` ends them all (also on errors)."""

    def __init__(self, work: Path, log_dir: Path, clock: Clock):
        self.work, self.log_dir, self.clock = work, log_dir, clock
        self.procs: list[Proc] = []
        self.gens: dict[str, int] = {}

    def spawn(self, role: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        gen = self.gens.get(role, 0) + 1
        self.gens[role] = gen
        log = self.log_dir / f"{role}-{gen}.log"
        with log.open("wb") as out:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        proc = Proc(role, gen, popen, self.clock.now(), log)
        self.procs.append(proc)
        return proc

    def live(self, role: str) -> Proc:
        return next(p for p in reversed(self.procs) if p.role == role and p.ended is None)

    async def kill9(self, proc: Proc) -> None:
        """SIGKILL to the process group: no shutdown handler runs (a crash)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.popen.wait, 30)
        proc.ended, proc.end = self.clock.now(), "sigkill"

    def close(self) -> None:
        """SIGTERM every live group, SIGKILL what is left after 10 s."""
        live = [p for p in self.procs if p.popen.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(max(0.1, deadline - time.monotonic()))
        for p in self.procs:  # the group too: the reward service's grader processes
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            if p.popen.poll() is None:
                p.popen.wait(10)
            if p.ended is None:
                p.ended, p.end = self.clock.now(), "stopped"


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


class SoakRecord:
    """What a soak run records as it goes: its options, processes, model, clock, events,
    errors and samples. bench/soak.py's ``Soak`` is one; bench/soak_pushes.py and
    bench/soak_report.py read it through this class, so neither imports bench/soak.py."""

    def __init__(self, args: argparse.Namespace, stack: Stack, model: Path) -> None:
        self.args, self.stack, self.model = args, stack, model
        self.clock = stack.clock
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.redis_mem: list[tuple[float, float, int]] = []  # (t, used_memory MB, keys)
        self.client_rss: list[tuple[float, float]] = []
        self.consumers: list[tuple[float, dict[int, int]]] = []  # (t, version -> consumers)


def vineppo() -> list[str]:
    script = Path(sys.executable).parent / "vineppo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


# -- the soak --------------------------------------------------------------------------
async def wait_redis(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            if await r.ping():  # answers only once the append-only file is loaded
                return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}") from None
        finally:
            await r.aclose()
        await asyncio.sleep(0.05)


async def wait_http_ready(url: str, proc: Proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if not proc.alive:
                raise RuntimeError(f"{proc.key} exited: see {proc.log}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def replica_id(proc: Proc) -> str:
    return f"{socket.gethostname()}-{proc.pid}"  # the worker's default id (hostname-pid)


async def wait_replica(
    queue: JobQueue, proc: Proc, version: Callable[[], int] = lambda: 0, timeout: float = 180
) -> None:
    """Until ``proc`` beats "ready" at ``version()`` (asked again at every look: a push may
    move the version while the replica starts)."""
    rid, deadline = replica_id(proc), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.key} exited: see {proc.log}")
        with contextlib.suppress(Exception):
            for beat in await queue.list_replicas():
                if (beat.replica_id, beat.state, beat.loaded_version) == (rid, "ready", version()):
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.key} not ready after {timeout}s: see {proc.log}")


async def consumer_counts(port: int) -> dict[int, int]:
    """Consumers of the group ``workers`` in every job stream: version -> count."""
    r = Redis(port=port, decode_responses=True, socket_timeout=2)
    try:
        out: dict[int, int] = {}
        async for key in r.scan_iter(match=f"{PREFIX}jobs:v*", _type="stream"):
            with contextlib.suppress(Exception):  # a stream without the group yet
                out[int(str(key).rsplit("v", 1)[1])] = len(await r.xinfo_consumers(key, GROUP))
        return dict(sorted(out.items()))
    finally:
        await r.aclose()
