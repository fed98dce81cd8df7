"""Soak benchmark: the distributed stack under a steady MC-value load for ``--minutes`` while
rollout replicas are ``kill -9``'d and restarted and Redis is ``kill -9``'d once.

The stack, every part a real process on 127.0.0.1 (nothing else is touched):

- a private ``redis-server`` on a free port with its own ``--dir`` (the compose flags
  ``--appendonly yes --appendfsync everysec``);
- the reward service: ``vineppo serve reward --workers 1``;
- 2 rollout replicas: ``vineppo serve rollout --worker-only --engine torch`` (one thread each)
  on a tiny Llama this script trains in a few seconds (``tests/services/rollout/tiny.py``).

The load is the trainer's path: value jobs (MC estimates V(s) of partial solutions) submitted
to the Redis queue with ``shared.queue`` and answered by the replicas. ``--concurrency``
clients in this process take request slots at ``--rate`` requests/s (a fixed schedule; a
client that is still waiting takes its next slot late, counted as ``behind schedule``). A
request is one job, submitted once and never retried, so a job the stack drops cannot hide
behind a retry: each ends **answered** (ok result), **failed** (a result with ``ok=False``;
its error is kept), **late** (no result within ``--request-timeout-s``, found in the final
drain) or **lost** (no result at all after the drain).

Chaos: every ``--kill-every-s`` one replica (alternating) gets SIGKILL — as soon as it holds
a job, waiting at most ``--kill-wait-busy-s``, so that kills exercise the reclaim path — and
is restarted at once (a new process, a new replica id; its in-flight job is reclaimed by a
live replica after the worker's ``claim_idle_ms``, 10 s by default); at
``--redis-kill-at-s`` (default: half-way, between two replica kills) redis-server gets SIGKILL
and is restarted on the same port and directory after ``--redis-down-s``.

Measured: requests answered/failed/late/lost, latency (submit → result seen) p50/p90/p99/max
overall and per minute, each kill's in-flight jobs and when they were answered, the time to
ready of each restart, RSS of every process (sampled every ``--sample-s``; first vs last
minute of its life), Redis ``used_memory`` and key counts, counts of what the workers logged.

    .venv/bin/python -m bench.soak                                   # 10 minutes (≈ 11 wall)
    .venv/bin/python -m bench.soak --minutes 2 --kill-every-s 30     # the short version

Prints a summary and writes ``--out`` (JSON). Needs ``redis-server`` on PATH. Exit status 1
when any job was lost or a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import logging
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from shared.queue import JobQueue, make_queue  # noqa: E402
from shared.schemas import Job, JobResult, SamplingParams, ValueItem, ValueRequest  # noqa: E402
from tests.support import free_port  # noqa: E402

PREFIX = "vineppo:"  # the default prefix: `vineppo serve rollout --worker-only` has no flag
STREAM = f"{PREFIX}jobs:v0"
GROUP = "workers"
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


def vineppo() -> list[str]:
    script = Path(sys.executable).parent / "vineppo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


# -- the model and the load ------------------------------------------------------------
def problems(seed: int, n: int = 40) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(1, 30), rng.randint(1, 30)) for _ in range(n)]


def build_model(out: Path, seed: int) -> Path:
    """A tiny Llama trained to write ``Answer: a+b=c\\n#### c`` (a subprocess: the load
    generator stays free of torch, so its RSS is the client's own)."""
    texts = [
        f"Question: {a}+{b}=?\nAnswer: {a}+{b}={a + b}\n#### {a + b}"
        for a, b in problems(seed)[:24]
    ]
    code = (
        "import json, sys; from pathlib import Path; "
        "from tests.services.rollout.tiny import train_tiny_model_dir; "
        "train_tiny_model_dir(Path(sys.argv[1]), json.loads(sys.argv[2]), steps=300, "
        "seed=int(sys.argv[3]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", code, str(out), json.dumps(texts), str(seed)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return out


def value_job(n: int, run_id: str, args: argparse.Namespace, pool: list[tuple[int, int]]) -> Job:
    """Request ``n``: ``--items`` states (prompt + a partial of 0-2 steps), ``--k`` samples."""
    rng = random.Random(args.seed * 1_000_003 + n)
    items = []
    for _ in range(args.items):
        a, b = rng.choice(pool)
        partial = rng.choice(["", "Answer: ", f"Answer: {a}+{b}="])
        items.append(
            ValueItem(prompt=f"Question: {a}+{b}=?\n", partial_response=partial, gold=str(a + b))
        )
    sampling = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, seed=args.seed)
    request = ValueRequest(items=items, k=args.k, sampling=sampling, stream_offset=n * args.items)
    return Job(job_id=f"soak-{run_id}-{n:06d}", kind="value", policy_version=0, value=request)


@dataclass
class Request:
    n: int
    job_id: str
    client: int
    t_sched: float
    t_submit: float = -1.0
    t_done: float | None = None
    status: str = "pending"  # answered | failed | late | lost (pending/timeout: not final)
    worker: str | None = None
    error: str | None = None
    worker_s: float | None = None
    bad: str | None = None  # a result that does not match the request
    values: list[float] = field(default_factory=list)

    @property
    def latency(self) -> float | None:
        return None if self.t_done is None else self.t_done - self.t_submit


def check_result(job: Job, res: JobResult) -> str | None:
    """Why ``res`` is not a valid answer to ``job`` (None: it is)."""
    req = job.value
    assert req is not None
    if res.policy_version != 0 or res.value is None or res.value.policy_version != 0:
        return f"policy version {res.policy_version}"
    if len(res.value.values) != len(req.items):
        return f"{len(res.value.values)} values for {len(req.items)} items"
    for v in res.value.values:
        if not (v.terminal or v.out_of_budget) and len(v.returns) != req.k:
            return f"{len(v.returns)} returns for k={req.k}"
    return None


class Load:
    """``concurrency`` clients taking request slots of a fixed-rate schedule."""

    def __init__(self, queue: JobQueue, args: argparse.Namespace, clock: Clock, end: float):
        self.queue, self.args, self.clock, self.end = queue, args, clock, end
        self.run_id = f"{args.seed}-{os.getpid()}"
        self.pool = problems(args.seed)
        self.slots = itertools.count()
        self.requests: list[Request] = []
        self.jobs: dict[str, Job] = {}
        self.behind: list[float] = []  # how late each late slot was taken (s)

    async def client(self, i: int) -> None:
        args = self.args
        while True:
            n = next(self.slots)
            t_sched = n / args.rate
            if t_sched >= self.end:
                return
            wait = t_sched - self.clock.now()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.05:
                self.behind.append(-wait)
            job = value_job(n, self.run_id, args, self.pool)
            req = Request(n, job.job_id, i, t_sched)
            self.requests.append(req)
            self.jobs[job.job_id] = job
            req.t_submit = self.clock.now()
            try:
                await self.queue.submit(job)
                got = await self.queue.wait_results([job.job_id], args.request_timeout_s)
            except Exception as exc:  # Redis gone past the client's reconnect window
                req.status, req.error = "timeout", f"client: {type(exc).__name__}: {exc}"
                continue
            if job.job_id in got:
                self.settle(req, got[job.job_id], self.clock.now())
            else:
                req.status = "timeout"

    def settle(self, req: Request, res: JobResult, t_done: float) -> None:
        req.t_done, req.worker, req.worker_s = t_done, res.worker_id, res.elapsed_s
        job = self.jobs.pop(req.job_id)  # kept until answered: the client's RSS stays its own
        if res.ok:
            req.status = "answered" if req.status == "pending" else "late"
            req.bad = check_result(job, res)
            req.values = [v.value for v in res.value.values] if res.value else []
        else:
            req.status, req.error = "failed", res.error

    async def drain(self, seconds: float) -> None:
        """Look for the results of unanswered jobs for up to ``seconds``; the rest are lost."""
        deadline = time.monotonic() + seconds
        while True:
            open_ = [r for r in self.requests if r.status == "timeout"]
            if not open_:
                return
            with contextlib.suppress(Exception):
                got = await self.queue.get_results([r.job_id for r in open_])
                for r in open_:
                    if r.job_id in got:
                        self.settle(r, got[r.job_id], self.clock.now())
            if time.monotonic() >= deadline:
                for r in open_:
                    if r.status == "timeout":
                        r.status = "lost"
                return
            await asyncio.sleep(0.5)


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


async def wait_replica(queue: JobQueue, proc: Proc, timeout: float = 180) -> None:
    rid, deadline = replica_id(proc), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.key} exited: see {proc.log}")
        with contextlib.suppress(Exception):
            for beat in await queue.list_replicas():
                if beat.replica_id == rid and beat.state == "ready" and beat.loaded_version == 0:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.key} not ready after {timeout}s: see {proc.log}")


class Soak:
    def __init__(self, args: argparse.Namespace, stack: Stack, model: Path):
        self.args, self.stack, self.model = args, stack, model
        self.clock = stack.clock
        self.redis_port = free_port()
        self.redis_dir = stack.work / "redis"
        self.redis_dir.mkdir()
        self.url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.reward_url = f"http://127.0.0.1:{free_port()}"
        self.events: list[dict[str, Any]] = []
        self.redis_mem: list[tuple[float, float, int]] = []  # (t, used_memory MB, keys)
        self.errors: list[str] = []
        self.client_proc = psutil.Process()
        self.client_rss: list[tuple[float, float]] = []
        self.restarts: list[asyncio.Task[None]] = []

    # processes
    def start_redis(self) -> Proc:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH")
        cmd = [
            binary,
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *COMPOSE_FLAGS,
            "--dir",
            str(self.redis_dir),
        ]
        return self.stack.spawn("redis", cmd)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VINEPPO_ROLLOUT_CHECKPOINT_ROOT": str(self.stack.work / "ckpt"),
        }

    def start_replica(self, role: str) -> Proc:
        cmd = [
            *vineppo(),
            "serve",
            "rollout",
            "--worker-only",
            "--engine",
            "torch",
            "--model",
            str(self.model),
            "--redis-url",
            self.url,
            "--reward-url",
            self.reward_url,
        ]
        return self.stack.spawn(role, cmd, self.env())

    async def start(self, queue: JobQueue) -> None:
        redis = self.start_redis()
        await wait_redis(self.redis_port)
        redis.ready_after_s = self.clock.now() - redis.started
        port = self.reward_url.rsplit(":", 1)[1]
        reward = self.stack.spawn(
            "reward",
            [
                *vineppo(),
                "serve",
                "reward",
                "--host",
                "127.0.0.1",
                "--port",
                port,
                "--workers",
                "1",
            ],
            self.env(),
        )
        replicas = [self.start_replica(r) for r in ("replica-a", "replica-b")]
        await wait_http_ready(self.reward_url, reward)
        reward.ready_after_s = self.clock.now() - reward.started
        for p in replicas:
            await wait_replica(queue, p)
            p.ready_after_s = self.clock.now() - p.started

    # chaos
    async def inflight(self, rid: str) -> list[str]:
        """Job ids the consumer ``rid`` holds (delivered, not acked)."""
        r = Redis(port=self.redis_port, decode_responses=True, socket_timeout=2)
        try:
            pending = await r.xpending_range(STREAM, GROUP, "-", "+", 16, consumername=rid)
            out = []
            for p in pending:
                for _, fields in await r.xrange(STREAM, p["message_id"], p["message_id"]):
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
                await wait_replica(queue, new)
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

    # memory
    async def sample(self) -> None:
        while True:
            t = self.clock.now()
            for p in self.stack.procs:
                if p.ended is not None or not p.alive:
                    continue
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(p.pid)
                    tree = [root, *root.children(recursive=True)]
                    rss = 0
                    for q in tree:
                        with contextlib.suppress(psutil.Error):
                            rss += q.memory_info().rss
                    p.rss.append((round(t, 1), round(rss / MB, 2)))
            self.client_rss.append((round(t, 1), round(self.client_proc.memory_info().rss / MB, 2)))
            with contextlib.suppress(Exception):
                r = Redis(port=self.redis_port, socket_timeout=1)
                try:
                    info = await r.info("memory")
                    keys = await r.dbsize()
                finally:
                    await r.aclose()
                self.redis_mem.append((round(t, 1), round(info["used_memory"] / MB, 3), keys))
            await asyncio.sleep(self.args.sample_s)

    async def final_redis_state(self) -> dict[str, Any]:
        r = Redis(port=self.redis_port, decode_responses=True, socket_timeout=5)
        try:
            consumers = await r.xinfo_consumers(STREAM, GROUP)
            pending = await r.xpending(STREAM, GROUP)
            aof = sum(f.stat().st_size for f in self.redis_dir.rglob("*") if f.is_file())
            return {
                "stream_len": await r.xlen(STREAM),
                "pending": pending["pending"],
                "consumers": len(consumers),
                "consumers_with_pending": sum(1 for c in consumers if c["pending"]),
                "keys": await r.dbsize(),
                "result_keys": len([k async for k in r.scan_iter(f"{PREFIX}result:*")]),
                "aof_dir_mb": round(aof / MB, 2),
                "jobs_in_stream": [
                    Job.model_validate_json(f["job"]).job_id for _, f in await r.xrange(STREAM)
                ],
            }
        finally:
            await r.aclose()

    async def run(self) -> dict[str, Any]:
        a = self.args
        t_setup = time.monotonic()
        queue = make_queue(self.url, prefix=PREFIX)
        await self.start(queue)
        setup_s = time.monotonic() - t_setup
        print(
            f"stack ready in {setup_s:.1f}s: redis :{self.redis_port}, reward "
            f"{self.reward_url}, replicas "
            f"{[replica_id(self.stack.live(r)) for r in ('replica-a', 'replica-b')]}",
            flush=True,
        )
        # t = 0: the load starts
        offset = self.clock.now()
        self.clock.t0 += offset
        for p in self.stack.procs:
            p.started -= offset
        end = a.minutes * 60
        load = Load(queue, a, self.clock, end)
        sampler = asyncio.create_task(self.sample())
        progress = asyncio.create_task(self.progress(load, end))
        chaos = asyncio.create_task(self.chaos(queue, end))
        clients = [asyncio.create_task(load.client(i)) for i in range(a.concurrency)]
        try:
            await asyncio.gather(*clients)
            t_load_end = self.clock.now()
            await chaos  # its last event was before the end: a restart is never cut short
            await asyncio.gather(*self.restarts)
            await load.drain(a.drain_s)
            final = await self.final_redis_state()
        finally:
            for task in (sampler, progress, chaos, *clients):
                task.cancel()
            await asyncio.gather(sampler, progress, chaos, *clients, return_exceptions=True)
            await queue.close()
        return self.report(load, final, setup_s, t_load_end)

    async def progress(self, load: Load, end: float) -> None:
        while True:
            await asyncio.sleep(30)
            done = [r for r in load.requests if r.status == "answered"]
            lat = sorted(r.latency for r in done[-200:] if r.latency is not None)
            p50 = f"{1e3 * lat[len(lat) // 2]:.0f} ms" if lat else "-"
            print(
                f"[{self.clock.now():6.1f}s / {end:.0f}s] {len(load.requests)} sent, "
                f"{len(done)} answered, p50 of the last 200 {p50}, load "
                f"{os.getloadavg()[0]:.1f}",
                flush=True,
            )

    # report
    def report(
        self, load: Load, final: dict[str, Any], setup_s: float, t_load_end: float
    ) -> dict[str, Any]:
        a, reqs = self.args, load.requests
        by = {s: [r for r in reqs if r.status == s] for s in ("answered", "failed", "late", "lost")}
        lat = sorted(r.latency for r in by["answered"] if r.latency is not None)
        minutes = []
        for m in range(int(-(-a.minutes * 60 // 60))):
            rs = [r for r in reqs if m * 60 <= r.t_submit < (m + 1) * 60]
            ls = sorted(r.latency for r in rs if r.status == "answered" and r.latency is not None)
            minutes.append(
                {
                    "minute": m + 1,
                    "sent": len(rs),
                    "answered": sum(r.status == "answered" for r in rs),
                    "not_answered": sum(r.status != "answered" for r in rs),
                    **latency_stats(ls),
                }
            )
        for ev in self.events:  # what became of each killed replica's in-flight jobs
            jobs = []
            for job_id in ev.get("inflight_jobs", []):
                r = next((q for q in reqs if q.job_id == job_id), None)
                if r is not None:
                    jobs.append(
                        {
                            "job_id": job_id,
                            "status": r.status,
                            "worker": r.worker,
                            "latency_s": None if r.latency is None else round(r.latency, 2),
                            "answered_after_kill_s": None
                            if r.t_done is None
                            else round(r.t_done - ev["t"], 2),
                        }
                    )
            if "inflight_jobs" in ev:
                ev["inflight"] = jobs
            if ev["what"].startswith("SIGKILL redis"):  # when answers flowed again
                up = ev["t"] + ev["down_s"]
                after = [r.t_done for r in reqs if r.t_done is not None and r.t_done > up]
                ev["first_answer_after_restart_s"] = round(min(after) - up, 2) if after else None
                around = [
                    r.latency
                    for r in reqs
                    if r.latency is not None and ev["t"] - 5 <= r.t_submit <= up
                ]
                ev["max_latency_of_requests_sent_5s_before_to_restart_s"] = (
                    round(max(around), 2) if around else None
                )
        logs = {k: 0 for k in [*LOG_MARKS, "reclaimed_jobs"]}
        for p in self.stack.procs:
            if p.role.startswith("replica") and p.log.exists():
                text = p.log.read_text(errors="replace")
                for k, mark in LOG_MARKS.items():
                    logs[k] += text.count(mark)
                logs["reclaimed_jobs"] += sum(int(n) for n in RECLAIMED.findall(text))
        reward_log = "".join(
            p.log.read_text(errors="replace")
            for p in self.stack.procs
            if p.role == "reward" and p.log.exists()
        )
        memory = [memory_row(p.key, p.rss, p.started, p.ended, p.end) for p in self.stack.procs]
        memory.append(memory_row("load generator (this process)", self.client_rss, 0.0, None, ""))
        answered_late = [r for r in by["late"]]
        total = len(reqs)
        return {
            "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": {
                "cpus": os.cpu_count(),
                "arch": platform.machine(),
                "cpu": cpu_model(),
                "python": platform.python_version(),
                "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            },
            "config": {k: v for k, v in vars(a).items() if k != "out"} | {"out": str(a.out)},
            "setup_s": round(setup_s, 1),
            "load_s": round(t_load_end, 1),
            "requests": {
                "sent": total,
                "answered": len(by["answered"]),
                "failed": len(by["failed"]),
                "late": len(answered_late),
                "lost": len(by["lost"]),
                "bad_results": sum(r.bad is not None for r in reqs),
                "throughput_per_s": round(len(by["answered"]) / max(t_load_end, 1e-9), 3),
                "behind_schedule": len(load.behind),
                "behind_max_s": round(max(load.behind, default=0.0), 2),
            },
            "latency": latency_stats(lat),
            "worker_s": latency_stats(
                sorted(r.worker_s for r in by["answered"] if r.worker_s is not None)
            ),
            "served_by": count_by(r.worker for r in by["answered"]),
            "failures": [{"job_id": r.job_id, "error": r.error} for r in by["failed"]],
            "late": [
                {
                    "job_id": r.job_id,
                    "t_submit": round(r.t_submit, 2),
                    "latency_s": round(r.latency or 0, 2),
                }
                for r in answered_late
            ],
            "lost": [
                {"job_id": r.job_id, "t_submit": round(r.t_submit, 2), "error": r.error}
                for r in by["lost"]
            ],
            "bad": [{"job_id": r.job_id, "why": r.bad} for r in reqs if r.bad],
            "mean_value": mean_value(by["answered"]),
            "events": self.events,
            "per_minute": minutes,
            "restart_ready_s": {
                p.key: round(p.ready_after_s, 2)
                for p in self.stack.procs
                if p.ready_after_s is not None
            },
            "memory": memory,
            "redis_memory": redis_memory(self.redis_mem),
            "redis_final": final,
            "replica_logs": logs,
            "reward_log_tracebacks": reward_log.count("Traceback"),
            "errors": self.errors,
            "series": {
                "rss_mb": {p.key: p.rss for p in self.stack.procs} | {"client": self.client_rss},
                "redis_used_mb_keys": self.redis_mem,
            },
        }


# -- numbers ---------------------------------------------------------------------------
def latency_stats(xs: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max in ms of a sorted list (nearest rank)."""
    if not xs:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}

    def rank(q: float) -> float:
        return round(1e3 * xs[min(len(xs) - 1, max(0, int(q * len(xs) + 0.999999) - 1))], 1)

    return {
        "n": len(xs),
        "p50_ms": rank(0.5),
        "p90_ms": rank(0.9),
        "p99_ms": rank(0.99),
        "max_ms": round(1e3 * xs[-1], 1),
        "mean_ms": round(1e3 * statistics.fmean(xs), 1),
    }


def memory_row(
    key: str, rss: list[tuple[float, float]], started: float, ended: float | None, end: str
) -> dict[str, Any]:
    """RSS of a process (tree): median of its first minute (after 10 s of warm-up) and of its
    last minute, the growth between them, its peak."""
    row: dict[str, Any] = {
        "process": key,
        "started_s": round(started, 1),
        "ended_s": None if ended is None else round(ended, 1),
        "end": end,
    }
    if not rss:
        return row | {"samples": 0}
    t_first, t_last = rss[0][0], rss[-1][0]
    if t_last - t_first < 20:  # killed (or ended) while still starting: no steady state
        return row | {
            "samples": len(rss),
            "life_s": round(t_last - t_first, 1),
            "peak_mb": round(max(m for _, m in rss), 1),
        }
    warm = [m for t, m in rss if t >= t_first + 10] or [m for _, m in rss]
    first = [m for t, m in rss if t_first + 10 <= t < t_first + 70] or warm[:1]
    last = [m for t, m in rss if t > t_last - 60] or warm[-1:]
    f, la = statistics.median(first), statistics.median(last)
    return row | {
        "samples": len(rss),
        "life_s": round(t_last - t_first, 1),
        "first_min_mb": round(f, 1),
        "last_min_mb": round(la, 1),
        "growth_mb": round(la - f, 1),
        "growth_pct": round(100 * (la - f) / f, 1),
        "peak_mb": round(max(m for _, m in rss), 1),
    }


def redis_memory(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    if not samples:
        return {}
    first = [s for s in samples if s[0] < samples[0][0] + 60]
    last = [s for s in samples if s[0] > samples[-1][0] - 60]
    return {
        "first_min_used_mb": round(statistics.median(s[1] for s in first), 2),
        "last_min_used_mb": round(statistics.median(s[1] for s in last), 2),
        "first_keys": first[0][2],
        "last_keys": last[-1][2],
    }


def count_by(xs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[str(x)] = out.get(str(x), 0) + 1
    return dict(sorted(out.items()))


def mean_value(answered: list[Request]) -> float | None:
    """Mean V(s) over every answered state (a sanity check: the tiny model is trained)."""
    values = [v for r in answered for v in r.values]
    return round(statistics.fmean(values), 4) if values else None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def summary(r: dict[str, Any]) -> str:
    q, lat = r["requests"], r["latency"]
    lines = [
        f"soak: {r['load_s']:.0f}s of load, {q['sent']} requests sent "
        f"({r['config']['rate']}/s, {r['config']['concurrency']} clients)",
        f"answered {q['answered']}  failed {q['failed']}  late {q['late']}  "
        f"LOST {q['lost']}  bad results {q['bad_results']}  "
        f"({q['throughput_per_s']}/s answered)",
        f"latency ms: p50 {lat['p50_ms']}  p90 {lat['p90_ms']}  p99 {lat['p99_ms']}  "
        f"max {lat['max_ms']}",
        "",
        f"{'event':<26} {'t (s)':>7} {'in flight':>9} {'answered after (s)':>18} "
        f"{'restart ready (s)':>17}",
    ]
    for ev in r["events"]:
        after = ",".join(str(j["answered_after_kill_s"]) for j in ev.get("inflight", []))
        ready = ev.get("restart_ready_s", ev.get("down_s", ""))
        n = len(ev.get("inflight_jobs", [])) if "inflight_jobs" in ev else "-"
        lines.append(f"{ev['what']:<26} {ev['t']:>7} {n!s:>9} {after or '-':>18} {ready!s:>17}")
    lines += [
        "",
        f"{'process':<32} {'life (s)':>8} {'first min MB':>12} {'last min MB':>11} "
        f"{'growth MB':>9} {'peak MB':>8}",
    ]
    for m in r["memory"]:
        if "first_min_mb" in m:
            lines.append(
                f"{m['process']:<32} {m['life_s']:>8} {m['first_min_mb']:>12} "
                f"{m['last_min_mb']:>11} {m['growth_mb']:>9} {m['peak_mb']:>8}"
            )
    rm = r["redis_memory"]
    if rm:
        lines.append(
            f"redis used_memory: {rm['first_min_used_mb']} → {rm['last_min_used_mb']} MB,"
            f" keys {rm['first_keys']} → {rm['last_keys']}"
        )
    lines.append(f"redis at the end: {r['redis_final']}")
    lines.append(f"replica logs: {r['replica_logs']}")
    if r["errors"]:
        lines.append(f"errors: {r['errors']}")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=10.0, help="Length of the load.")
    p.add_argument(
        "--kill-every-s",
        type=float,
        default=60.0,
        help="SIGKILL one replica (alternating) this often; 0 = never.",
    )
    p.add_argument(
        "--kill-wait-busy-s",
        type=float,
        default=5.0,
        help="Before a replica kill, wait up to this long for it to hold a job (0 = blind).",
    )
    p.add_argument(
        "--redis-kill-at-s",
        type=float,
        default=None,
        help="When to SIGKILL redis-server (default: half-way, between two replica "
        "kills); negative = never.",
    )
    p.add_argument("--redis-down-s", type=float, default=1.0, help="Redis stays down this long.")
    p.add_argument("--concurrency", type=int, default=4, help="Concurrent clients.")
    p.add_argument("--rate", type=float, default=4.0, help="Requests per second (all clients).")
    p.add_argument("--items", type=int, default=2, help="States per request (job).")
    p.add_argument("--k", type=int, default=4, help="MC continuations per state.")
    p.add_argument("--max-tokens", type=int, default=32, help="Response budget per state.")
    p.add_argument(
        "--request-timeout-s",
        type=float,
        default=120.0,
        help="A request without a result by then is 'late' or 'lost'.",
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=30.0,
        help="After the load, how long unanswered jobs may still get a result.",
    )
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="Keep the processes' logs here (default: a temp dir, deleted).",
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "soak.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with tempfile.TemporaryDirectory(prefix="vineppo-soak-") as d:
        work = Path(d)
        log_dir = args.log_dir or work / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        clock = Clock()
        stack = Stack(work, log_dir, clock)
        try:
            t0 = time.monotonic()
            model = build_model(work / "model", args.seed)
            print(f"tiny model trained in {time.monotonic() - t0:.1f}s", flush=True)
            result = asyncio.run(Soak(args, stack, model).run())
        except KeyboardInterrupt as exc:
            print(f"interrupted ({exc}): stopping every process this bench started", flush=True)
            return 130
        finally:
            stack.close()
        result["processes"] = [
            {"process": p.key, "pid": p.pid, "end": p.end, "exit": p.popen.returncode}
            for p in stack.procs
        ]
    print(summary(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    q = result["requests"]
    return 1 if q["lost"] or q["bad_results"] or result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
