"""Pass@1 through the services: sample S answers per problem at a low temperature, grade,
average. Used by the RL loop for validation and by ``vineppo eval``."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.trainer.client.jobs import JobOptions, run_generate_jobs
from services.trainer.client.local_services import Services
from services.trainer.config import RunConfig
from services.trainer.data.order import stream_seed
from shared.example import Example
from shared.queue import JobQueue
from shared.schemas import GradeItem, SamplingParams, Verdict


@dataclass
class PassAt1:
    mean: float
    """Pass@1 averaged over problems and seeds."""
    per_seed: list[float]
    """Pass@1 of each seed (sample index) over all problems."""
    num_problems: int
    per_problem: list[float]
    """Pass@1 of each problem (mean over its samples)."""

    @property
    def spread(self) -> float:
        return statistics.pstdev(self.per_seed) if len(self.per_seed) > 1 else 0.0

    @property
    def stderr(self) -> float:
        """Standard error of ``mean`` over problems (samples of one problem are not
        independent draws of the benchmark, so the problem is the unit)."""
        n = len(self.per_problem)
        return statistics.stdev(self.per_problem) / n**0.5 if n > 1 else 0.0


def pass_at_1(verdicts: Sequence[Sequence[Verdict]]) -> PassAt1:
    """verdicts[i][s] = verdict of sample s on problem i -> Pass@1 and its spread over seeds."""
    if not verdicts:
        raise ValueError("no problems to score")
    seeds = len(verdicts[0])
    per_seed = [sum(v[s].reward for v in verdicts) / len(verdicts) for s in range(seeds)]
    per_problem = [sum(x.reward for x in v) / len(v) for v in verdicts]
    return PassAt1(sum(per_seed) / seeds, per_seed, len(verdicts), per_problem)


async def evaluate(
    queue: JobQueue,
    grader: object,
    examples: Sequence[Example],
    prompts: Sequence[str],
    *,
    version: int,
    seeds: int,
    temperature: float,
    max_tokens: int,
    seed: int = 1234,
    top_p: float = 1.0,
    progress: bool = True,
) -> PassAt1:
    """Pass@1 of policy ``version`` on ``examples`` (``prompts[i]`` formats ``examples[i]``)."""
    sampling = SamplingParams(
        temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
    )
    outs = await run_generate_jobs(
        queue,
        prompts,
        version=version,
        n=seeds,
        sampling=sampling,
        options=JobOptions(job_size=32, desc="eval", progress=progress),  # 32 prompts × S rows
    )
    items = [
        GradeItem(response=c.text, gold=ex.answer, dataset=ex.dataset)
        for ex, per in zip(examples, outs, strict=True)
        for c in per
    ]
    flat = await grader.grade(items)  # type: ignore[attr-defined]
    truncated = [c.finish_reason != "stop" for per in outs for c in per]
    flat = [
        v.model_copy(update={"reward": 0.0}) if t else v
        for v, t in zip(flat, truncated, strict=True)
    ]
    grouped = [flat[i * seeds : (i + 1) * seeds] for i in range(len(examples))]
    return pass_at_1(grouped)


VALIDATION_STREAM = "validation"
"""Validation samples draw from ``stream_seed(cfg.seed, "validation")`` at every validation
of a run (common random numbers: two validations of one run differ by the policy, not by
the draw), the same in the RL loop and the baselines."""


async def validation_metrics(
    services: Services,
    examples: Sequence[Example],
    prompts: Sequence[str],
    *,
    version: int,
    cfg: RunConfig,
    progress: bool = True,
) -> dict[str, float]:
    """The training runs' validation row (the RL loop and the baselines alike): Pass@1 of
    ``version`` per ``cfg.eval``. With several ranks, rank 0 evaluates and every rank gets
    its row."""
    from services.trainer.runtime.distributed import broadcast_from_main, rank

    row: dict[str, float] | None = None
    if rank() == 0:
        t0 = time.monotonic()
        ev = cfg.eval
        res = await evaluate(
            services.queue,
            services.grader,
            examples,
            prompts,
            version=version,
            seeds=ev.seeds,
            temperature=ev.temperature,
            max_tokens=ev.max_response_tokens,
            seed=stream_seed(cfg.seed, VALIDATION_STREAM),
            top_p=ev.top_p,
            progress=progress,
        )
        row = {
            "acc/val": res.mean,
            "acc/val_spread": res.spread,
            "acc/val_se": res.stderr,
            "time/eval": time.monotonic() - t0,
        }
    return await asyncio.to_thread(broadcast_from_main, row)
