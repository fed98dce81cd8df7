"""The soak bench's load: a tiny model trained for it, value jobs of its arithmetic problems,
the request records and the fixed-rate load generator. Used by bench/soak.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench.soak_stack import Clock  # noqa: E402
from shared.queue import JobQueue  # noqa: E402
from shared.schemas import Job, JobResult, SamplingParams, ValueItem, ValueRequest  # noqa: E402


# -- the model and the load ------------------------------------------------------------
def problems(seed: int, n: int = 40) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(1, 30), rng.randint(1, 30)) for _ in range(n)]


def build_model(out: Path, seed: int) -> Path:
    """A tiny Llama trained to write ``Answer: a+b=c\\n#### c`` (a subprocess: the load
    generator stays free of torch, so its RSS is the client's own), and next to it
    ``variants/`` with the weights the bench pushes: the trained ones and the same with a
    little noise (1e-3), so every pushed policy still answers."""
    texts = [
        f"Question: {a}+{b}=?\nAnswer: {a}+{b}={a + b}\n#### {a + b}"
        for a, b in problems(seed)[:24]
    ]
    code = (
        "import json, sys; from pathlib import Path; "
        "from tests.services.rollout.tiny import train_tiny_model_dir; "
        "train_tiny_model_dir(Path(sys.argv[1]), json.loads(sys.argv[2]), steps=300, "
        "seed=int(sys.argv[3])); "
        "import torch; from safetensors.torch import load_file, save_file; "
        "w = load_file(Path(sys.argv[1]) / 'model.safetensors'); "
        "v = Path(sys.argv[1]).parent / 'variants'; v.mkdir(exist_ok=True); "
        "save_file(w, v / '0.safetensors'); torch.manual_seed(int(sys.argv[3])); "
        "save_file({k: t + 1e-3 * torch.randn_like(t) for k, t in w.items()}, "
        "v / '1.safetensors')"
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


def value_job(
    n: int, run_id: str, args: argparse.Namespace, pool: list[tuple[int, int]], version: int = 0
) -> Job:
    """Request ``n``: ``--items`` states (prompt + a partial of 0-2 steps), ``--k`` samples,
    pinned to policy ``version``."""
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
    return Job(job_id=f"soak-{run_id}-{n:06d}", kind="value", policy_version=version, value=request)


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
    stale: bool = False  # served by another policy version than the job's
    version: int = 0  # the job's policy version
    values: list[float] = field(default_factory=list)

    @property
    def latency(self) -> float | None:
        return None if self.t_done is None else self.t_done - self.t_submit


def check_result(job: Job, res: JobResult) -> str | None:
    """Why ``res`` is not a valid answer to ``job`` (None: it is)."""
    req = job.value
    assert req is not None
    v = job.policy_version
    if res.policy_version != v or res.value is None or res.value.policy_version != v:
        return f"stale: v{res.policy_version} served a v{v} job"
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
        self.version = 0  # the policy version new jobs are pinned to (bench/soak_pushes.py)
        self.open = asyncio.Event()  # cleared while a push drains the load
        self.open.set()
        self.in_flight = 0

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
            while not self.open.is_set():  # a push in progress: the trainer sends nothing
                await self.open.wait()
            wait = t_sched - self.clock.now()
            if wait < -0.05:
                self.behind.append(-wait)
            job = value_job(n, self.run_id, args, self.pool, self.version)
            req = Request(n, job.job_id, i, t_sched, version=job.policy_version)
            self.requests.append(req)
            self.jobs[job.job_id] = job
            req.t_submit = self.clock.now()
            self.in_flight += 1
            try:
                await self.queue.submit(job)
                got = await self.queue.wait_results([job.job_id], args.request_timeout_s)
                if job.job_id in got:  # read: the queue keeps it only briefly now
                    await self.queue.release_results([job.job_id])
            except Exception as exc:  # Redis gone past the client's reconnect window
                req.status, req.error = "timeout", f"client: {type(exc).__name__}: {exc}"
                continue
            finally:
                self.in_flight -= 1
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
            req.stale = req.bad is not None and req.bad.startswith("stale")
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
                await self.queue.release_results(list(got))
            if time.monotonic() >= deadline:
                for r in open_:
                    if r.status == "timeout":
                        r.status = "lost"
                return
            await asyncio.sleep(0.5)
