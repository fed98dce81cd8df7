"""Queue benchmarks: per-job overhead (Redis Streams vs in-process) and weight-push latency
(announce → every replica reports version N) against checkpoint size, compared with the time
to just read the checkpoint from disk. Writes docs/benchmarks/queue.md.

Run from the repo root (``-m`` matters: a script named queue.py must not shadow the stdlib):

    .venv/bin/python -m bench.queue_bench                     # defaults below, ~2 minutes on 2 CPUs
    .venv/bin/python -m bench.queue_bench --jobs 500 --hidden 128,512 --replicas 2

Needs ``redis-server`` on PATH (a private one is started on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.trainer.client.jobs import JobOptions, run_jobs, wait_for_replicas  # noqa: E402
from services.trainer.client.weights import announce, save_policy  # noqa: E402
from shared.queue import JobQueue, make_queue  # noqa: E402
from shared.schemas import GenerateRequest, Job, JobResult  # noqa: E402
from tests.support import redis_process  # noqa: E402


# 1) per-job overhead ----------------------------------------------------------------------
async def _noop_worker(queue: JobQueue, count: int) -> None:
    """Answers every job at once: what is left is the queue's own cost."""
    while True:
        for delivery_id, job in await queue.fetch(0, "bench", count=count, block_ms=100):
            await queue.put_result(
                JobResult(job_id=job.job_id, policy_version=0, worker_id="bench", ok=True)
            )
            await queue.ack(delivery_id)


def _job() -> Job:
    return Job(kind="generate", policy_version=0, generate=GenerateRequest(prompts=["1+1="]))


async def overhead(queue: JobQueue, n_jobs: int, n_latency: int) -> dict[str, float]:
    worker = asyncio.create_task(_noop_worker(queue, count=32))
    try:
        lat = []
        for _ in range(n_latency):  # one job at a time: submit → result seen by the client
            t0 = time.perf_counter()
            job = _job()
            await queue.submit(job)
            await queue.wait_results([job.job_id], timeout_s=10)
            lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await run_jobs(
            queue, [_job() for _ in range(n_jobs)], JobOptions(progress=False, poll_s=0.05)
        )
        batch_s = time.perf_counter() - t0
    finally:
        worker.cancel()
    lat.sort()
    return {
        "p50_ms": 1e3 * lat[len(lat) // 2],
        "p99_ms": 1e3 * lat[int(len(lat) * 0.99) - 1],
        "batch_us_per_job": 1e6 * batch_s / n_jobs,
    }


# 2) weight push ---------------------------------------------------------------------------
def _model(hidden: int, seed: int):  # type: ignore[no-untyped-def]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.services.rollout.tiny import make_tokenizer

    tok = make_tokenizer(["Question: 1+2=?\nAnswer: 3\n#### 3"])
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg), tok


def _read_s(path: Path) -> float:
    """Seconds to read every byte of the checkpoint's safetensors file (median of 3)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with (path / "model.safetensors").open("rb") as f:
            while f.read(1 << 24):
                pass
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _load_s(model, path: Path) -> float:  # type: ignore[no-untyped-def]
    """Seconds for the engine's loader alone (read + checks + copy into a live model)."""
    from services.rollout.engine.weights import load_safetensors_into

    t0 = time.perf_counter()
    load_safetensors_into(model, path)
    return time.perf_counter() - t0


async def push_latency(redis_url: str, hidden: int, replicas: int, work: Path) -> dict[str, float]:
    prefix = f"bench-{hidden}-{replicas}:"
    queue = make_queue(redis_url, prefix=prefix)
    model, tok = _model(hidden, seed=0)
    root = work / f"ckpt-{hidden}-{replicas}"
    v0 = save_policy(model, tok, root, 0)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "VINEPPO_ROLLOUT_QUEUE_PREFIX": prefix,
        "VINEPPO_ROLLOUT_HEARTBEAT_S": "0.5",
        "VINEPPO_ROLLOUT_CHECKPOINT_ROOT": str(root),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "serve",
                "rollout",
                "--worker-only",
                "--model",
                str(v0),
                "--redis-url",
                redis_url,
            ],
            cwd=ROOT,
            env={**env, "VINEPPO_ROLLOUT_REPLICA_ID": f"r{i}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(replicas)
    ]
    try:
        await wait_for_replicas(queue, 0, replicas, timeout=120)
        pushes, reads, loads = [], [], []
        for v in (1, 2, 3):
            new, _ = _model(hidden, seed=v)
            path = save_policy(new, tok, root, v)
            reads.append(_read_s(path))
            loads.append(_load_s(new, path))
            t0 = time.perf_counter()
            await announce(queue, v, path)
            await wait_for_replicas(queue, v, replicas, timeout=120, poll_s=0.002)
            pushes.append(time.perf_counter() - t0)
        size = (path / "model.safetensors").stat().st_size
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        await queue.close()
    return {
        "size_mb": size / 2**20,
        "read_s": statistics.median(reads),
        "load_s": statistics.median(loads),
        "push_s": statistics.median(pushes),
    }


# 3) report --------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> str:
    lines = [
        "# Queue benchmarks",
        "",
        f"`python -m bench.queue_bench {' '.join(sys.argv[1:])}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "## Per-job overhead (no-op worker in the same process)",
        "",
        f"| backend | round trip p50 (ms) | p99 (ms) | batch of {args.jobs}: µs/job |",
        "|---|---|---|---|",
    ]
    with redis_process() as redis, tempfile.TemporaryDirectory() as tmp:
        for name, url in (("in-process", None), ("redis", redis.url)):
            queue = make_queue(url, prefix="bench-overhead:")
            r = await overhead(queue, args.jobs, args.latency)
            await queue.close()
            lines.append(
                f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['batch_us_per_job']:.0f} |"
            )
            print(lines[-1], flush=True)
        lines += [
            "",
            "## Weight push (worker processes, Redis pub/sub)",
            "",
            "Push = announce → every replica's heartbeat reports the version (median of "
            "3 pushes); read = reading every byte of the same safetensors file (median of 3, "
            "page cache warm for both).",
            "",
            "| replicas | checkpoint (MB) | read (ms) | engine load alone (ms) | push (ms) "
            "| push / read | target ≤ 2× |",
            "|---|---|---|---|---|---|---|",
        ]
        for replicas in args.replicas:
            for hidden in args.hidden:
                r = await push_latency(redis.url, hidden, replicas, Path(tmp))
                ratio = r["push_s"] / r["read_s"]
                lines.append(
                    f"| {replicas} | {r['size_mb']:.1f} | {1e3 * r['read_s']:.1f} "
                    f"| {1e3 * r['load_s']:.1f} "
                    f"| {1e3 * r['push_s']:.1f} | {ratio:.1f}× "
                    f"| {'yes' if ratio <= 2 else 'no'} |"
                )
                print(lines[-1], flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += [
        "",
        f"Load average at the end of the run: {load} (other jobs share the machine).",
        "",
        "Notes: every replica is a separate `vineppo serve rollout --worker-only` "
        "process with one torch thread; push time = pub/sub delivery + the engine's "
        "`load_weights` (safetensors read + shape checks + copy into the live "
        "parameters) + one heartbeat + the trainer's 2 ms poll. All replicas load at "
        "once, so on a machine with fewer free cores than replicas they queue for CPU. "
        "Round trip = submit → no-op worker → result seen by the client (Redis: "
        "XADD, XREADGROUP, SET NX, XACK+XDEL, MGET poll).",
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=2000, help="Jobs in the throughput batch.")
    p.add_argument("--latency", type=int, default=200, help="Sequential round trips.")
    p.add_argument(
        "--hidden",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[128, 512, 1024, 1536],
        help="Model widths (checkpoint sizes).",
    )
    p.add_argument(
        "--replicas",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="Worker processes in the push (one table block each).",
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/queue.md")
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = parse()
    report = asyncio.run(main(ns))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(report)
    print(f"wrote {ns.out}")
