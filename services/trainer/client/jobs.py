"""Trainer side of the work queue: split a batch into jobs, gather results in input order.

    results = await run_value_jobs(queue, items, version=3, k=9, sampling=sp, job_size=8)
    # results[i] is the ValueEstimate of items[i], served by policy version 3

Each chunk of ``job_size`` items becomes one job, carrying ``stream_offset`` = the position
of its first item in the batch: every sample's random stream is keyed by its global
position, so chunks never share a stream and ``job_size`` changes no sample.

Attempt ``a`` of chunk ``c`` has the job id ``<batch>-c<c>-a<a>``: a worker stores at most
one result per job id (first wins), so a reclaimed job never yields two results, and the
client takes exactly one result per chunk (the first ``ok`` one among its attempts). A chunk
whose attempt failed (``ok=False``) or timed out is resubmitted with ``attempt+1`` — the
timed-out attempt stays valid and wins if it finishes first — up to ``max_attempts``; then
:class:`JobsFailed` is raised. Once a chunk has its result (or the call fails), the ids of
all its attempts are released (``JobQueue.release_results``): the queue keeps them only
briefly, and drops the answer of an attempt still running instead of storing it for a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tqdm.auto import tqdm

from shared.queue import JobQueue
from shared.schemas import (
    Completion,
    GenerateRequest,
    Job,
    JobResult,
    ReplicaHeartbeat,
    SamplingParams,
    ValueEstimate,
    ValueItem,
    ValueRequest,
    new_id,
)

log = logging.getLogger(__name__)
R = TypeVar("R")


class JobsFailed(RuntimeError):
    """Some chunks got no ok result within their attempts."""


class ReplicasNotReady(TimeoutError):
    """Not enough live replicas report the wanted version in time."""


@dataclass
class JobOptions:
    job_size: int = 8  # items (prompts or states) per job
    timeout_s: float = 300.0  # per attempt: after this a chunk is resubmitted
    max_attempts: int = 3  # attempts per chunk, the first included
    poll_s: float = 0.5  # longest wait between result checks
    progress: bool = True  # tqdm bar
    desc: str = "jobs"


@dataclass
class _Chunk:
    index: int
    job: Job  # the latest attempt
    job_ids: list[str]  # every attempt's id
    deadline: float
    result: JobResult | None = None
    errors: list[str] = field(default_factory=list)
    failed_seen: set[str] = field(default_factory=set)


def _attempt(job: Job, attempt: int, base: str) -> Job:
    return job.model_copy(update={"job_id": f"{base}-a{attempt}", "attempt": attempt})


async def run_jobs(queue: JobQueue, jobs: Sequence[Job], options: JobOptions) -> list[JobResult]:
    """Submit ``jobs``, return one ok result per job in the same order (retrying as above)."""
    batch = new_id()[:12]
    now = time.monotonic()
    chunks: list[_Chunk] = []
    for i, job in enumerate(jobs):
        first = _attempt(job, 0, f"{batch}-c{i}")
        chunks.append(_Chunk(i, first, [first.job_id], now + options.timeout_s))
        await queue.submit(first)
    bar = tqdm(total=len(chunks), desc=options.desc, disable=not options.progress, leave=False)
    try:
        while pending := [c for c in chunks if c.result is None]:
            ids = [j for c in pending for j in c.job_ids]
            got = await queue.wait_results(ids, timeout_s=options.poll_s)
            for c in pending:
                await _settle(queue, c, got, options, batch)
            done = [c for c in pending if c.result is not None]
            await queue.release_results([j for c in done for j in c.job_ids])
            bar.update(len(done))
    finally:
        bar.close()
        unread = [j for c in chunks if c.result is None for j in c.job_ids]
        if unread:  # failed or cancelled: nobody reads these (never mask the error)
            with contextlib.suppress(Exception):
                await queue.release_results(unread)
    return [c.result for c in chunks if c.result is not None]


async def _settle(
    queue: JobQueue, c: _Chunk, got: dict[str, JobResult], options: JobOptions, batch: str
) -> None:
    """Take the chunk's first ok result, or resubmit it after a failure or a timeout."""
    oks = [got[j] for j in c.job_ids if j in got and got[j].ok]
    if oks:
        c.result = min(oks, key=lambda r: r.finished_at)
        return
    failed = [j for j in c.job_ids if j in got and j not in c.failed_seen]
    if failed:
        c.failed_seen.update(failed)
        c.errors.append(got[failed[-1]].error or "failed")
    elif time.monotonic() >= c.deadline:
        c.errors.append(f"timeout after {options.timeout_s}s")
    else:
        return
    if len(c.job_ids) >= options.max_attempts:
        raise JobsFailed(
            f"job chunk {c.index} got no result in {len(c.job_ids)} attempt(s): {c.errors}"
        )
    c.job = _attempt(c.job, c.job.attempt + 1, f"{batch}-c{c.index}")
    c.job_ids.append(c.job.job_id)
    c.deadline = time.monotonic() + options.timeout_s
    log.warning("resubmitting chunk %d as attempt %d (%s)", c.index, c.job.attempt, c.errors[-1])
    await queue.submit(c.job)


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


async def run_value_jobs(
    queue: JobQueue,
    items: Sequence[ValueItem],
    *,
    version: int,
    k: int,
    sampling: SamplingParams,
    options: JobOptions | None = None,
) -> list[ValueEstimate]:
    """MC value of every item by policy ``version``; result[i] belongs to items[i]."""

    def job(r: range) -> Job:
        request = ValueRequest(
            items=[items[i] for i in r], k=k, sampling=sampling, stream_offset=r.start
        )
        return Job(kind="value", policy_version=version, value=request)

    options = options or JobOptions(desc="value jobs")
    return await _run_chunked(queue, len(items), job, JobResult.value_estimates, version, options)


async def run_generate_jobs(
    queue: JobQueue,
    prompts: Sequence[str],
    *,
    version: int,
    n: int,
    sampling: SamplingParams,
    options: JobOptions | None = None,
) -> list[list[Completion]]:
    """``n`` completions of every prompt by policy ``version``, in input order."""

    def job(r: range) -> Job:
        request = GenerateRequest(
            prompts=[prompts[i] for i in r], n=n, sampling=sampling, stream_offset=r.start
        )
        return Job(kind="generate", policy_version=version, generate=request)

    options = options or JobOptions(desc="generate jobs")
    return await _run_chunked(queue, len(prompts), job, JobResult.completions, version, options)


async def _run_chunked(
    queue: JobQueue,
    count: int,
    make_job: Callable[[range], Job],
    answers: Callable[[JobResult], list[R]],
    version: int,
    options: JobOptions,
) -> list[R]:
    """Chunks of ``options.job_size`` inputs -> one job each (``make_job``) -> the answers of
    every job (``answers``, checked against the chunk) in input order."""
    spans = _chunks(count, options.job_size)
    results = await run_jobs(queue, [make_job(r) for r in spans], options)
    out: list[R] = []
    for r, res in zip(spans, results, strict=True):
        _check(res, version)
        part = answers(res)
        assert len(part) == len(r)
        out.extend(part)
    return out


def _check(res: JobResult, version: int) -> None:
    if res.policy_version != version:  # the queue's per-version streams make this impossible
        raise JobsFailed(f"job {res.job_id} served by v{res.policy_version}, wanted v{version}")


async def wait_for_replicas(
    queue: JobQueue,
    version: int,
    min_replicas: int = 1,
    timeout: float = 300.0,
    poll_s: float = 0.05,
) -> list[ReplicaHeartbeat]:
    """Wait until ≥ ``min_replicas`` live replicas are ready with ``version``; return them.

    Replicas that failed to load ``version`` are excluded and named in a WARNING (once each);
    :class:`ReplicasNotReady` is raised after ``timeout`` seconds, naming who is where.
    """
    deadline = time.monotonic() + timeout
    warned: set[str] = set()
    while True:
        replicas = await queue.list_replicas()
        ready = [r for r in replicas if r.state == "ready" and r.loaded_version == version]
        for r in replicas:
            if r.state == "failed" and r.failed_version == version and r.replica_id not in warned:
                warned.add(r.replica_id)
                log.warning(
                    "replica %s failed to load policy v%d and is excluded: %s",
                    r.replica_id,
                    version,
                    r.error,
                )
        if len(ready) >= min_replicas:
            return ready
        if time.monotonic() >= deadline:
            where = ", ".join(f"{r.replica_id}={r.state}@v{r.loaded_version}" for r in replicas)
            raise ReplicasNotReady(
                f"{len(ready)}/{min_replicas} replicas ready with v{version} after "
                f"{timeout}s; live: {where or 'none'}"
            )
        await asyncio.sleep(poll_s)
