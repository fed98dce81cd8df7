"""Soak benchmark: the distributed stack under a steady MC-value load for ``--minutes`` while
rollout replicas are ``kill -9``'d and restarted, Redis is ``kill -9``'d once and a new policy
version is pushed every ``--push-every-s``.

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

Pushes (``bench/soak_pushes.py``): every ``--push-every-s`` (first at ``--push-at-s``) the
load pauses and drains, ``policy-v<N>/`` is written and announced on the queue like the
trainer's ``push_policy``, and once every live replica beats ready at N the load resumes with
jobs pinned to N (the stream of N - 2 is dropped). A result served by another version than
its job's is **stale** (counted, and a bad result). Results are released once read (the
trainer's ``run_jobs`` does the same), and Redis memory and the consumer count of every job
stream are sampled, so their growth over the run is measured.

Chaos: every ``--kill-every-s`` one replica (alternating) gets SIGKILL — as soon as it holds
a job, waiting at most ``--kill-wait-busy-s``, so that kills exercise the reclaim path — and
is restarted at once (a new process, a new replica id; its in-flight job is reclaimed by a
live replica after the worker's ``claim_idle_ms``, 10 s by default); at
``--redis-kill-at-s`` (default: half-way, between two replica kills) redis-server gets SIGKILL
and is restarted on the same port and directory after ``--redis-down-s``.

Measured: requests answered/failed/late/lost, latency (submit → result seen) p50/p90/p99/max
overall and per minute, each kill's in-flight jobs and when they were answered, the time to
ready of each restart, RSS of every process (sampled every ``--sample-s``; first vs last
minute of its life), Redis ``used_memory``, key and consumer counts, the pushes (drain,
time until every replica serves the new version), counts of what the workers logged.

    .venv/bin/python -m bench.soak                                   # 10 minutes (≈ 11 wall)
    .venv/bin/python -m bench.soak --minutes 30                      # the long one
    .venv/bin/python -m bench.soak --minutes 2 --kill-every-s 30     # the short version

Prints a summary and writes ``--out`` (JSON). Needs ``redis-server`` on PATH. Exit status 1
when any job was lost or a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from bench.soak_chaos import Chaos  # noqa: E402
from bench.soak_load import Load, build_model  # noqa: E402
from bench.soak_pushes import Pusher  # noqa: E402
from bench.soak_report import (  # noqa: E402
    build_report,
    summary,
)
from bench.soak_stack import (  # noqa: E402
    COMPOSE_FLAGS,
    GROUP,
    MB,
    PREFIX,
    ROOT,
    Clock,
    Proc,
    Stack,
    consumer_counts,
    replica_id,
    stream,
    vineppo,
    wait_http_ready,
    wait_redis,
    wait_replica,
)
from shared.queue import JobQueue, make_queue  # noqa: E402
from shared.schemas import Job  # noqa: E402
from shared.serve import free_port  # noqa: E402

# -- the soak --------------------------------------------------------------------------


class Soak(Chaos):
    def __init__(self, args: argparse.Namespace, stack: Stack, model: Path):
        super().__init__(args, stack, model)
        self.redis_port = free_port()
        self.redis_dir = stack.work / "redis"
        self.redis_dir.mkdir()
        self.url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.reward_url = f"http://127.0.0.1:{free_port()}"
        self.client_proc = psutil.Process()
        self.restarts: list[asyncio.Task[None]] = []
        self.load: Load | None = None

    def version(self) -> int:
        """The policy version the load's jobs are pinned to now."""
        return 0 if self.load is None else self.load.version

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
            with contextlib.suppress(Exception):
                self.consumers.append((round(t, 1), await consumer_counts(self.redis_port)))
            await asyncio.sleep(self.args.sample_s)

    async def final_redis_state(self) -> dict[str, Any]:
        r = Redis(port=self.redis_port, decode_responses=True, socket_timeout=5)
        key = stream(self.version())
        try:
            consumers = await r.xinfo_consumers(key, GROUP)
            pending = await r.xpending(key, GROUP)
            aof = sum(f.stat().st_size for f in self.redis_dir.rglob("*") if f.is_file())
            return {
                "version": self.version(),
                "consumers_per_stream": await consumer_counts(self.redis_port),
                "stream_len": await r.xlen(key),
                "pending": pending["pending"],
                "consumers": len(consumers),
                "consumers_with_pending": sum(1 for c in consumers if c["pending"]),
                "keys": await r.dbsize(),
                "result_keys": len([k async for k in r.scan_iter(f"{PREFIX}result:*")]),
                "aof_dir_mb": round(aof / MB, 2),
                "jobs_in_stream": [
                    Job.model_validate_json(f["job"]).job_id for _, f in await r.xrange(key)
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
        load = self.load = Load(queue, a, self.clock, end)
        pusher = Pusher(self, load, queue)
        sampler = asyncio.create_task(self.sample())
        progress = asyncio.create_task(self.progress(load, end))
        chaos = asyncio.create_task(self.chaos(queue, end))
        pushes = asyncio.create_task(pusher.run(end))
        clients = [asyncio.create_task(load.client(i)) for i in range(a.concurrency)]
        try:
            await asyncio.gather(*clients)
            t_load_end = self.clock.now()
            await chaos  # its last event was before the end: a restart is never cut short
            await pushes
            await asyncio.gather(*self.restarts)
            await load.drain(a.drain_s)
            await asyncio.sleep(a.sample_s)  # one more sample after the drain
            final = await self.final_redis_state()
        finally:
            for task in (sampler, progress, chaos, pushes, *clients):
                task.cancel()
            await asyncio.gather(sampler, progress, chaos, pushes, *clients, return_exceptions=True)
            await queue.close()
        self.events = sorted(self.events + pusher.events, key=lambda e: float(e["t"]))
        return build_report(self, load, final, setup_s, t_load_end)

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
    p.add_argument(
        "--push-every-s",
        type=float,
        default=60.0,
        help="Push a new policy version this often; 0 = never.",
    )
    p.add_argument(
        "--push-at-s",
        type=float,
        default=45.0,
        help="When the first push happens (between two replica kills).",
    )
    p.add_argument(
        "--push-drain-timeout-s",
        type=float,
        default=60.0,
        help="Longest wait for the load's in-flight jobs before a push.",
    )
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
    p.add_argument(
        "--warm-up-s",
        type=float,
        default=300.0,
        help="Redis memory and consumers are judged flat after this.",
    )
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
    return 1 if q["lost"] or q["bad_results"] or q["stale"] or result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
