"""PPO's critic in the RL loop: its optimizer schedule, value warm-up and its diagnostics.

- `critic_schedule`: the critic's own peak learning rate (``ppo.critic_lr``), its number of
  optimizer steps (critic epochs, warm-up iterations included) and whether its LR decays.
- `warmup_critic`: value warm-up. Before the first policy update, ``ppo.critic_warmup_iterations``
  rounds of: sample responses of π_ref (policy v0) to training prompts, grade them, and run
  critic-only epochs on their returns. The prompts come from an order of their own, so the
  policy still sees the same prompts, iteration by iteration, as every other method.
- `returns_fit`: every iteration, how well the critic (before its update) explains the returns
  it is about to be trained on (``critic/ev_returns``).
- `probe_values_now`: at validation, the critic against MC ground truth on step states of fresh
  responses of the current policy, next to the GRPO/RLOO group mean on the same states
  (``value/critic_mae``, ``value/critic_ev``, ``value/group_mae``).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Protocol

import torch
from torch import Tensor

from services.trainer.client.local_services import Services
from services.trainer.config import RunConfig
from services.trainer.data.episodes import Batch, Episode
from services.trainer.data.order import DataOrder, stream_seed
from services.trainer.evaluation.analysis import GROUP_BASELINE, explained_variance, summarize
from services.trainer.evaluation.value_probe import ProbeConfig, probe_values
from services.trainer.rl.ppo import UpdateInputs, ppo_epochs
from services.trainer.runtime.distributed import DistInfo, broadcast_from_main
from shared.example import Example


class RLTrainer(Protocol):
    """What this module uses of `services.trainer.rl.loop.RLTrainer`."""

    cfg: RunConfig
    info: DistInfo
    services: Services
    critic: Any
    gen: torch.Generator
    tokenizer: Any
    train: list[Example]
    val: list[Example]
    version: int

    def prompt(self, ex: Example) -> str: ...

    async def sample(
        self, examples: list[Example], seed: int, desc: str = ...
    ) -> tuple[list[Episode], Batch, Any, float, int]: ...

    async def advantages(
        self, episodes: list[Episode], batch: Batch, seed: int
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]: ...


CRITIC = "PPO critic"
"""The critic's name in the value analysis (``value_probe``)."""


def critic_schedule(cfg: RunConfig, common: dict[str, Any]) -> dict[str, Any]:
    """`runtime.distributed.wrap` keyword arguments of the critic: the policy's (``common``)
    with the critic's peak LR, its own step count (``critic_epochs`` per iteration, warm-up
    iterations included) and, with ``critic_lr_decay: false``, a constant LR after warm-up."""
    p = cfg.ppo
    mini_batches = cfg.episodes_per_iteration // p.mini_batch_size
    per_iteration = (p.critic_epochs or p.epochs) * mini_batches
    total = (cfg.iterations + p.critic_warmup_iterations) * per_iteration
    return {
        **common,
        "lr": p.critic_lr or cfg.optim.lr,
        "total_steps": total,
        "warmup_steps": math.ceil(cfg.optim.warmup_ratio * total),
        "lr_end_ratio": common["lr_end_ratio"] if p.critic_lr_decay else 1.0,
    }


def returns_fit(values: Tensor, returns: Tensor, mask: Tensor) -> dict[str, float]:
    """values, returns, mask (B, T) -> the critic's explained variance of the returns over
    response tokens (1 = perfect, 0 = no better than their mean, < 0 = worse)."""
    sel = mask.bool()
    ev = explained_variance(values[sel].float(), returns[sel].float())
    return {} if math.isnan(ev) else {"critic/ev_returns": ev}


def update_critic(t: RLTrainer, batch: Batch, extra: dict[str, Tensor]) -> dict[str, float]:
    """Critic-only epochs on one batch (no policy step, so no log-probs are needed)."""
    dev = t.info.device
    batch = batch.to(dev)
    empty = torch.zeros(0)
    inputs = UpdateInputs(
        batch=batch,
        advantages=torch.zeros_like(batch.response_mask),
        old_logprobs=empty,
        ref_logprobs=empty,
        old_values=extra["old_values"].to(dev),
        returns=extra["returns"].to(dev),
    )
    return ppo_epochs(
        None,
        t.critic,
        inputs,
        t.cfg.ppo,
        t.cfg.rollout.temperature,
        t.gen,
        rank=t.info.rank,
        world_size=t.info.world_size,
    )


async def warmup_critic(t: RLTrainer) -> dict[str, float]:
    """Value warm-up (module docstring); returns the iteration-0 row's warm-up metrics."""
    cfg, start, cpu_start = t.cfg, time.monotonic(), time.process_time()
    order = DataOrder(len(t.train), stream_seed(cfg.seed, "critic-warmup-order"))
    fits: list[float] = []
    episodes_seen = 0
    for i in range(cfg.ppo.critic_warmup_iterations):
        examples = [t.train[j] for j in order.take(cfg.rollout.prompts_per_iteration)]
        seed = stream_seed(cfg.seed, "critic-warmup", i)
        episodes, batch, _, _, _ = await t.sample(examples, seed, desc="critic warm-up")
        _, extra, fit = await t.advantages(episodes, batch, seed)
        await asyncio.to_thread(update_critic, t, batch, extra)
        fits.append(fit.get("critic/ev_returns", math.nan))
        episodes_seen += len(episodes)
    row = {"critic/warmup_ev_first": fits[0], "critic/warmup_ev_last": fits[-1]}
    row = {k: v for k, v in row.items() if not math.isnan(v)}  # constant returns: no EV
    return {
        **row,
        "critic/warmup_episodes": float(episodes_seen),
        "time/critic_warmup": time.monotonic() - start,
        "time/cpu_critic_warmup": time.process_time() - cpu_start,
    }


async def probe_values_now(t: RLTrainer) -> dict[str, float]:
    """The validation row's value-probe metrics (module docstring), computed on rank 0."""
    cfg = t.cfg
    row: dict[str, float] | None = None
    if t.info.rank == 0:
        start = time.monotonic()
        examples = t.val[: cfg.eval.value_probe_prompts]
        probe = ProbeConfig(
            responses=max(2, cfg.rollout.responses_per_prompt),
            truth_k=cfg.eval.value_probe_k,
            vine_k=0,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            max_tokens=cfg.rollout.max_response_tokens,
            top_action_states=0,
            step_rules="math" if cfg.dataset == "math" else "gsm8k",
            seed=stream_seed(cfg.seed, "probe"),
            job_size=t.services.job_size,
            progress=False,
        )
        critic = t.critic.module if t.critic is not None else None
        records = await probe_values(
            t.services,
            t.tokenizer,
            examples,
            [t.prompt(x) for x in examples],
            probe,
            critic=critic,
            version=t.version,
        )
        metrics = summarize(records)
        row = {
            "value/probe_states": float(metrics[GROUP_BASELINE]["num_states"]),
            "time/value_probe": time.monotonic() - start,
        }
        for name, key in ((CRITIC, "critic"), (GROUP_BASELINE, "group")):
            for metric, short in (("mae", "mae"), ("explained_variance", "ev")):
                value = metrics.get(name, {}).get(metric)
                if value is not None:
                    row[f"value/{key}_{short}"] = float(value)
    return await asyncio.to_thread(broadcast_from_main, row)
