"""A real Redis crash: ``kill -9`` of redis-server mid-batch with the compose setting
(``--appendonly yes --appendfsync everysec``), restarted on the same port and directory,
under two rollout workers serving policy v1.

What must hold (the graceful restart with ``appendfsync always`` is in
``test_worker_processes.py``):

- the batch completes, one result per job id, and every result stored before the kill is
  still in Redis after the restart (nothing acknowledged is lost);
- duplicate deliveries (the same job id enqueued twice, as an ``XADD`` retried after a lost
  reply does) are detected by job id and dropped: each id gets exactly one stored result and
  the workers log each dropped copy;
- no result computed by a stale policy is used: every v1 job is answered with exactly the
  tokens a reference engine on the v1 weights samples, and jobs still queued for v0 (stale
  work) are never answered by the v1 replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.reward.client import RewardClient
from services.rollout.engine.torch_engine import TorchEngine
from services.rollout.worker import RolloutWorker, WorkerConfig
from services.trainer.client.jobs import JobOptions, run_jobs, wait_for_replicas
from services.trainer.client.weights import announce, save_policy
from shared.queue import make_queue
from shared.schemas import GenerateRequest, Job, SamplingParams
from tests.services.rollout.tiny import make_model, make_tiny_model_dir
from tests.support import RedisProcess, free_port

pytestmark = [pytest.mark.server, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
TEXTS = ["Question: 2+3=?\nAnswer: 2+3=5\n#### 5", "Question: 7*6=?\n7*6=42\n#### 42"]
# seeded, long-ish random continuations: deterministic per (seed, stream, sample), ≈ 0.2-1 s
SAMPLING = SamplingParams(temperature=1.0, max_tokens=40, seed=1234)
CLAIM_IDLE_MS = 1500
COMPOSE_FLAGS = ("--appendonly", "yes", "--appendfsync", "everysec")  # docker-compose.yml
DROPPED = "duplicate dropped"  # what the worker logs for every copy it drops


@pytest.fixture()
def crashable_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    r = RedisProcess(port=free_port(), dir=tmp_path / "redis", flags=COMPOSE_FLAGS)
    r.dir.mkdir()
    r.start()
    try:
        yield r
    finally:
        r.stop()


async def start_workers(
    url: str, model: Path, root: Path, ids: list[str], stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """Real rollout workers in this process, each with its own queue client and TorchEngine
    on the tiny model (generate jobs only: the reward URL is never called)."""
    tasks = []
    for rid in ids:
        config = WorkerConfig(
            replica_id=rid,
            block_ms=200,
            heartbeat_s=0.25,
            heartbeat_ttl_s=3,
            claim_idle_ms=CLAIM_IDLE_MS,
            checkpoint_root=root,
        )
        engine = await asyncio.to_thread(TorchEngine, model, version=0)
        worker = RolloutWorker(
            make_queue(url, prefix="crash:"), engine, RewardClient("http://127.0.0.1:9"), config
        )
        tasks.append(asyncio.create_task(worker.run(stop)))
    return tasks


def gen_job(version: int, prompt: str, stream: int) -> Job:
    request = GenerateRequest(prompts=[prompt], n=2, sampling=SAMPLING, stream_offset=stream)
    return Job(kind="generate", policy_version=version, generate=request)


async def test_sigkill_redis_everysec_mid_batch(
    crashable_redis: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import transformers

    caplog.set_level(logging.INFO, logger="services.rollout.worker")

    tiny = make_tiny_model_dir(tmp_path / "tiny", vocab_texts=TEXTS)
    root = tmp_path / "ckpt"
    queue = make_queue(crashable_redis.url, prefix="crash:")
    raw = queue._redis  # type: ignore[attr-defined]  # for SCAN of result keys only
    prompts = [f"Question: {i}+{i}=?\n" for i in range(12)]
    jobs = [gen_job(1, p, i) for i, p in enumerate(prompts)]
    stop = asyncio.Event()
    tasks = await start_workers(crashable_redis.url, tiny, root, ["w-1", "w-2"], stop)
    try:
        await wait_for_replicas(queue, 0, 2, timeout=60)
        # 1) the trainer's push of v1 (different random weights): both replicas load it
        tokenizer = transformers.AutoTokenizer.from_pretrained(tiny)
        path = save_policy(make_model(tokenizer, seed=1), tokenizer, root, 1)
        await announce(queue, 1, path)
        await wait_for_replicas(queue, 1, 2, timeout=60)
        # 2) stale work: v0 jobs still queued (nobody holds v0 any more)
        stale = [gen_job(0, p, i) for i, p in enumerate(prompts[:3])]
        for job in stale:
            await queue.submit(job)
        # 3) the v1 batch; then a second copy of 4 of its stream entries (same job id, same
        # body: what an XADD retried after a lost reply leaves behind)
        batch = asyncio.create_task(
            run_jobs(queue, jobs, JobOptions(timeout_s=120, poll_s=0.1, progress=False))
        )
        stream = "crash:jobs:v1"
        while await raw.xlen(stream) < 4:
            await asyncio.sleep(0.005)
        copies = [fields["job"] for _, fields in await raw.xrange(stream, count=4)]
        for body in copies:
            await raw.xadd(stream, {"job": body})
        dup_ids = {Job.model_validate_json(b).job_id for b in copies}
        # 4) kill -9 Redis once a few results are in and most of the work is still queued
        while True:
            stored = [k async for k in raw.scan_iter(match="crash:result:*")]
            if len(stored) >= 3:
                break
            assert not batch.done()
            await asyncio.sleep(0.02)
        await asyncio.to_thread(crashable_redis.kill9)
        depth_at_kill = len(jobs) - len(stored)
        t0 = time.monotonic()
        await asyncio.sleep(0.5)  # down for a while: workers and trainer see refused connects
        await asyncio.to_thread(crashable_redis.start)
        down_s = time.monotonic() - t0
        results = await asyncio.wait_for(batch, 120)
        batch_s = time.monotonic() - t0
        # 5) the duplicate copies drain (each is dropped by job id)
        deadline = time.monotonic() + 30
        while await queue.depth(1) > 0:
            assert time.monotonic() < deadline, "duplicate copies never drained"
            await asyncio.sleep(0.05)
        live = await queue.list_replicas()
        stored_after = {k async for k in raw.scan_iter(match="crash:result:*")}
        stale_depth = await queue.depth(0)
        stale_results = await queue.get_results([j.job_id for j in stale])
        assert not any(t.done() for t in tasks), "a worker died"
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    dropped = sum(DROPPED in r.getMessage() for r in caplog.records)
    print(
        f"\nredis kill -9 with {len(stored)} result(s) stored, ~{depth_at_kill} job(s) open; "
        f"down {down_s:.2f}s; batch done {batch_s:.2f}s after the kill; "
        f"{dropped} duplicate deliveries dropped"
    )
    # the batch completes: one ok result per job, every job id exactly once
    assert len(results) == len(jobs) and all(r.ok for r in results)
    ids = [r.job_id for r in results]
    assert len(set(ids)) == len(jobs) and dup_ids <= set(ids)
    # nothing stored before the kill was lost, and nothing was stored twice or for v0
    assert set(stored) <= stored_after
    assert stored_after == {f"crash:result:{i}" for i in ids}
    # every duplicate copy was detected and dropped (a crash may add more: an XADD retried)
    assert dropped >= len(dup_ids)
    # no stale result: v1 labels, the v1 weights' exact tokens, and v0 work left unanswered
    assert {r.policy_version for r in results} == {1}
    assert stale_depth == len(stale) and stale_results == {}
    ref = TorchEngine(root / "policy-v1", version=1)
    for job, res in zip(jobs, results, strict=True):
        assert job.generate is not None and res.generate is not None
        want = await ref.generate(
            job.generate.prompts, 2, SAMPLING, stream_offset=job.generate.stream_offset
        )
        assert [c.token_ids for c in res.generate.outputs[0]] == [c.token_ids for c in want[0]]
    old = TorchEngine(tiny, version=0)
    assert jobs[0].generate is not None
    v0 = await old.generate(jobs[0].generate.prompts, 2, SAMPLING)
    assert results[0].generate is not None
    assert [c.token_ids for c in v0[0]] != [c.token_ids for c in results[0].generate.outputs[0]]
    assert {b.replica_id: (b.state, b.loaded_version) for b in live} == {
        "w-1": ("ready", 1),
        "w-2": ("ready", 1),
    }
    await queue.close()
