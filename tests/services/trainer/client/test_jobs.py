"""The trainer's job client on the in-process queue: order, retries, first result wins,
replica waiting. The "worker" here is a scripted responder on the real queue, so each
failure mode (error, silence, late answer) happens exactly when the test says."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from services.trainer.client.jobs import (
    JobOptions,
    JobsFailed,
    ReplicasNotReady,
    run_generate_jobs,
    run_jobs,
    run_value_jobs,
    wait_for_replicas,
)
from shared.queue import InProcessQueue, JobQueue
from shared.schemas import (
    Completion,
    GenerateRequest,
    GenerateResult,
    Job,
    JobResult,
    ReplicaHeartbeat,
    SamplingParams,
    ValueEstimate,
    ValueItem,
    ValueResult,
)

Decide = Callable[[Job], Awaitable[JobResult | None]]  # None = stay silent (job lost)


def answer(job: Job, worker: str = "w") -> JobResult:
    """A deterministic answer that encodes the input, so order can be checked."""
    if job.kind == "value":
        assert job.value is not None
        values = [
            ValueEstimate(
                value=min(1.0, len(it.prompt) / 100),
                returns=[0.0],
                verdicts=["incorrect"],
                num_tokens=len(it.prompt),
            )
            for it in job.value.items
        ]
        return JobResult(
            job_id=job.job_id,
            policy_version=job.policy_version,
            worker_id=worker,
            ok=True,
            value=ValueResult(values=values, policy_version=job.policy_version),
        )
    assert job.generate is not None
    outs = [
        [Completion(text=p.upper(), token_ids=[], logprobs=[], finish_reason="stop")]
        for p in job.generate.prompts
    ]
    gen = GenerateResult(outputs=outs, policy_version=job.policy_version)
    return JobResult(
        job_id=job.job_id,
        policy_version=job.policy_version,
        worker_id=worker,
        ok=True,
        generate=gen,
    )


async def responder(queue: JobQueue, decide: Decide, seen: list[Job]) -> None:
    while True:
        for delivery_id, job in await queue.fetch(0, "scripted", count=4, block_ms=50):
            seen.append(job)
            result = await decide(job)
            if result is not None:
                await queue.put_result(result)
            await queue.ack(delivery_id)


async def run_with(
    decide: Decide, coro_fn: Callable[[JobQueue], Awaitable[object]]
) -> tuple[object, list[Job]]:
    queue = InProcessQueue()
    seen: list[Job] = []
    task = asyncio.create_task(responder(queue, decide, seen))
    try:
        return await coro_fn(queue), seen
    finally:
        task.cancel()


async def ok(job: Job) -> JobResult:
    return answer(job)


async def test_value_jobs_split_and_return_in_input_order() -> None:
    items = [ValueItem(prompt="x" * (i + 1), gold="1") for i in range(23)]
    opts = JobOptions(job_size=5, progress=False)
    out, seen = await run_with(
        ok,
        lambda q: run_value_jobs(q, items, version=0, k=3, sampling=SamplingParams(), options=opts),
    )
    assert isinstance(out, list)
    assert [v.num_tokens for v in out] == list(range(1, 24))
    assert [len(j.value.items) for j in seen if j.value] == [5, 5, 5, 5, 3]
    assert all(j.value and j.value.k == 3 for j in seen)
    # each job's random streams start at the global position of its first item
    assert [j.value.stream_offset for j in seen if j.value] == [0, 5, 10, 15, 20]


async def test_generate_jobs_in_order() -> None:
    prompts = [f"p{i}" for i in range(7)]
    opts = JobOptions(job_size=2, progress=False)
    out, seen = await run_with(
        ok,
        lambda q: run_generate_jobs(
            q, prompts, version=0, n=1, sampling=SamplingParams(), options=opts
        ),
    )
    assert isinstance(out, list)
    assert [c[0].text for c in out] == [p.upper() for p in prompts]
    assert [j.generate.stream_offset for j in seen if j.generate] == [0, 2, 4, 6]


async def test_failed_attempt_is_retried_with_attempt_plus_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail_first(job: Job) -> JobResult:
        if job.attempt == 0:
            return JobResult(
                job_id=job.job_id,
                policy_version=0,
                worker_id="w",
                ok=False,
                error="engine exploded",
            )
        return answer(job)

    jobs = [Job(kind="generate", policy_version=0, generate=GenerateRequest(prompts=["a"]))]
    with caplog.at_level(logging.WARNING):
        out, seen = await run_with(
            fail_first, lambda q: run_jobs(q, jobs, JobOptions(progress=False, poll_s=0.05))
        )
    assert [j.attempt for j in seen] == [0, 1]
    assert isinstance(out, list) and out[0].ok and out[0].job_id.endswith("-a1")
    assert "engine exploded" in caplog.text


async def test_lost_job_times_out_and_the_first_result_wins() -> None:
    late: list[Job] = []

    async def lose_first(job: Job) -> JobResult | None:
        if job.attempt == 0:
            late.append(job)  # silent: as if its worker died and nobody reclaimed it
            return None
        return answer(job, worker="retry")

    jobs = [Job(kind="generate", policy_version=0, generate=GenerateRequest(prompts=["a"]))]
    out, seen = await run_with(
        lose_first,
        lambda q: run_jobs(q, jobs, JobOptions(progress=False, timeout_s=0.3, poll_s=0.05)),
    )
    assert [j.attempt for j in seen] == [0, 1]
    assert isinstance(out, list) and len(out) == 1 and out[0].worker_id == "retry"


async def test_results_are_released_once_taken_and_a_late_answer_is_dropped() -> None:
    """Once a chunk has its result, every attempt's id is released: the result expires after
    ``read_ttl_s`` (not the day an unread one lives), and the answer of the timed-out attempt
    that comes after is dropped instead of stored."""
    queue = InProcessQueue(read_ttl_s=0.3)
    seen: list[Job] = []
    task = asyncio.create_task(responder(queue, lambda j: ok(j) if j.attempt else _none(), seen))
    jobs = [Job(kind="generate", policy_version=0, generate=GenerateRequest(prompts=["a"]))]
    try:
        out = await run_jobs(queue, jobs, JobOptions(progress=False, timeout_s=0.2, poll_s=0.05))
    finally:
        task.cancel()
    lost, answered = (j.job_id for j in seen)
    assert [r.job_id for r in out] == [answered]
    assert not await queue.put_result(answer(seen[0], worker="late"))  # attempt 0, too late
    await asyncio.sleep(0.4)
    assert await queue.get_results([lost, answered]) == {}


async def _none() -> None:
    return None


async def test_gives_up_after_max_attempts() -> None:
    async def always_fail(job: Job) -> JobResult:
        return JobResult(job_id=job.job_id, policy_version=0, worker_id="w", ok=False, error="no")

    jobs = [Job(kind="generate", policy_version=0, generate=GenerateRequest(prompts=["a"]))]
    with pytest.raises(JobsFailed, match="3 attempt"):
        await run_with(
            always_fail,
            lambda q: run_jobs(q, jobs, JobOptions(progress=False, max_attempts=3, poll_s=0.02)),
        )


async def test_wait_for_replicas_counts_only_ready_at_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = InProcessQueue()
    await q.heartbeat(ReplicaHeartbeat(replica_id="old", state="ready", loaded_version=1), 30)
    await q.heartbeat(
        ReplicaHeartbeat(
            replica_id="bad",
            state="failed",
            loaded_version=1,
            failed_version=2,
            error="OSError: disk",
        ),
        30,
    )
    with caplog.at_level(logging.WARNING), pytest.raises(ReplicasNotReady, match="0/1"):
        await wait_for_replicas(q, 2, 1, timeout=0.2)
    assert "bad" in caplog.text and "OSError: disk" in caplog.text and "old" not in caplog.text

    async def upgrade() -> None:
        await asyncio.sleep(0.1)
        await q.heartbeat(ReplicaHeartbeat(replica_id="old", state="ready", loaded_version=2), 30)

    task = asyncio.create_task(upgrade())
    ready = await wait_for_replicas(q, 2, 1, timeout=5)
    await task
    assert [r.replica_id for r in ready] == ["old"]
