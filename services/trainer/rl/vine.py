"""VinePPO's MC step values for one batch: plan the distinct states, ask the queue, scatter.

    values = await mc_step_values(queue, episodes, rewards, vine=cfg.vine, version=v,
                                  sampling=lambda seed: ..., seed=mc_seed, options=opts)
    inputs.step_values, inputs.next_step_values = values.step_values, values.next_step_values

With ``vine.reuse_returns`` every state gets only the MC continuations its batch's own
returns do not already supply (`mc_budget`), and the returns are pooled with them
(`pooled_state_values`; docs/algorithms.md, Reusing the batch's returns).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from services.trainer.algos.states import (
    StatePlan,
    mc_budget,
    num_steps_tensor,
    plan_states,
    pooled_state_values,
    scatter_state_values,
)
from services.trainer.client.jobs import JobOptions, run_value_jobs
from services.trainer.config import VineConfig
from services.trainer.data.episodes import Episode
from services.trainer.data.order import stream_seed
from shared.queue import JobQueue
from shared.schemas import SamplingParams, ValueEstimate, ValueItem


@dataclass
class StepValues:
    """What ``vine`` needs of the MC estimates (`AdvantageInputs` fields), and statistics."""

    step_values: Tensor
    next_step_values: Tensor | None
    num_steps: Tensor
    mc_step_cap: int | None
    stats: dict[str, float] = field(default_factory=dict)


def state_owners(plan: StatePlan, episodes: list[Episode]) -> list[Episode]:
    """For each unique state, an episode it came from (for its gold answer)."""
    owner: dict[int, Episode] = {}
    for row, ids in enumerate(plan.index):
        for u in ids:
            if u >= 0:
                owner.setdefault(u, episodes[row])
    return [owner[u] for u in range(len(plan.states))]


async def mc_step_values(
    queue: JobQueue,
    episodes: list[Episode],
    rewards: Tensor,
    *,
    vine: VineConfig,
    version: int,
    sampling: Callable[[int], SamplingParams],
    seed: int,
    options: JobOptions,
) -> StepValues:
    """MC values of every step-boundary state of ``episodes`` by policy ``version``."""
    cap = vine.mc_step_cap
    assert cap != "auto", "RunConfig resolves vine.mc_step_cap: auto per dataset"
    plan = plan_states(
        [e.prompt for e in episodes],
        [e.response for e in episodes],
        [e.spans for e in episodes],
        cap,
    )
    items = [
        ValueItem(prompt=p, partial_response=r, gold=e.example.answer, dataset=e.example.dataset)
        for (p, r), e in zip(plan.states, state_owners(plan, episodes), strict=True)
    ]
    k = mc_budget(plan, vine.k) if vine.reuse_returns else [vine.k] * len(items)
    # one job batch per distinct K, each on its own random streams
    groups = {kk: [u for u in range(len(items)) if k[u] == kk] for kk in sorted(set(k)) if kk}

    async def estimate(kk: int, us: list[int]) -> list[ValueEstimate]:
        group_seed = seed if kk == vine.k else stream_seed(seed, "mc-k", kk)
        return await run_value_jobs(
            queue,
            [items[u] for u in us],
            version=version,
            k=kk,
            sampling=sampling(group_seed),
            options=options,
        )

    results = await asyncio.gather(*(estimate(kk, us) for kk, us in groups.items()))
    est = torch.zeros(len(items))
    tokens = 0
    for us, estimates in zip(groups.values(), results, strict=True):
        for u, v in zip(us, estimates, strict=True):
            est[u] = v.value
            tokens += v.num_tokens
    num_steps = num_steps_tensor(plan)
    stats = {
        "value/num_states": float(len(items)),
        "value/num_steps_mean": float(num_steps.float().mean()),
        "value/mc_tokens": float(tokens),
        "value/mc_samples": float(sum(k)),
    }
    if not vine.reuse_returns:
        return StepValues(scatter_state_values(plan, est, rewards), None, num_steps, cap, stats)
    nxt, base = pooled_state_values(plan, est, torch.tensor(k), rewards)
    return StepValues(base, nxt, num_steps, cap, stats)
