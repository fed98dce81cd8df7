"""The PPO update on models: forward passes for log-probs/values and the minibatch epochs.

Pure math lives in ``services/trainer/algos``; this file runs it over (DeepSpeed-wrapped)
models in micro-batches. All (B, L−1) tensors are in the action frame of ``episodes.Batch``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from services.trainer.algos.losses import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    policy_loss,
    should_skip_update,
    value_loss,
    whiten,
)
from services.trainer.config import PPOConfig
from services.trainer.episodes import Batch


def _micro(idx: Tensor, size: int) -> list[Tensor]:
    return [idx[i : i + size] for i in range(0, len(idx), size)]


@torch.no_grad()
def policy_logprobs(model: Any, batch: Batch, temperature: float, micro: int) -> Tensor:
    """log π(token) of every action, logits / temperature: (B, L−1)."""
    out = []
    for idx in _micro(torch.arange(batch.size), micro):
        logits = model(input_ids=batch.input_ids[idx], attention_mask=batch.attention_mask[idx])
        logits = logits.logits[:, :-1].float()  # (b, L-1, V)
        out.append(logprobs_from_logits(logits, batch.input_ids[idx, 1:], temperature))
    return torch.cat(out)


@torch.no_grad()
def critic_values(critic: Any, batch: Batch, micro: int) -> Tensor:
    """V(s_t) of the state before every action: (B, L−1)."""
    out = []
    for idx in _micro(torch.arange(batch.size), micro):
        values = critic(batch.input_ids[idx], batch.attention_mask[idx])  # (b, L)
        out.append(values[:, :-1].float())
    return torch.cat(out)


@dataclass
class UpdateInputs:
    batch: Batch
    advantages: Tensor  # (B, L-1)
    old_logprobs: Tensor  # (B, L-1) π_θk
    ref_logprobs: Tensor  # (B, L-1) π_ref
    old_values: Tensor | None = None  # (B, L-1) critic before the update (ppo)
    returns: Tensor | None = None  # (B, L-1) value targets (ppo)


def ppo_epochs(
    policy: Any,
    critic: Any | None,
    inputs: UpdateInputs,
    cfg: PPOConfig,
    temperature: float,
    generator: torch.Generator,
    distributed: bool = False,
) -> dict[str, float]:
    """E epochs of shuffled minibatch updates; returns the mean of every logged statistic.

    1) shuffle episodes; 2) per minibatch, whiten advantages (over all ranks when
    distributed); 3) per micro-batch, clipped policy loss + β·KL, backward, DeepSpeed step
    (it steps the optimizer at each accumulation boundary); 4) the same for the critic.
    """
    b = inputs.batch
    logs: dict[str, list[float]] = defaultdict(list)
    for _ in range(cfg.epochs):
        perm = torch.randperm(b.size, generator=generator)
        for mb in _micro(perm, cfg.mini_batch_size):
            adv = inputs.advantages[mb]
            mask = b.response_mask[mb]
            if cfg.whiten_advantages:
                adv = whiten(adv, mask, distributed=distributed)
            for part in _micro(torch.arange(len(mb)), cfg.micro_batch_size):
                rows = mb[part]
                stats = _policy_step(policy, b, rows, adv[part], inputs, cfg, temperature)
                if critic is not None:
                    stats.update(_critic_step(critic, b, rows, inputs, cfg))
                for key, value in stats.items():
                    logs[key].append(value)
    return {key: sum(v) / len(v) for key, v in logs.items()}


def _policy_step(
    policy: Any, b: Batch, rows: Tensor, adv: Tensor, inputs: UpdateInputs, cfg: PPOConfig,
    temperature: float,
) -> dict[str, float]:  # fmt: skip
    mask = b.response_mask[rows]
    out = policy(input_ids=b.input_ids[rows], attention_mask=b.attention_mask[rows])
    logits = out.logits[:, :-1].float()  # (b, L-1, V)
    logp = logprobs_from_logits(logits, b.input_ids[rows, 1:], temperature)
    loss, stats = policy_loss(
        logp, inputs.old_logprobs[rows], adv, mask, cfg.clip_eps,
        ref_logprobs=inputs.ref_logprobs[rows], kl_coef=cfg.kl_coef, kl_clamp=cfg.kl_clamp,
    )  # fmt: skip
    skipped = should_skip_update(stats["ratio/mean"], cfg.ratio_skip)
    if skipped:  # the authors skip an update whose mean ratio explodes
        loss = loss * 0.0
    policy.backward(loss)
    policy.step()
    with torch.no_grad():
        entropy = masked_mean(entropy_from_logits(logits.detach(), temperature), mask)
    result = {k: float(v) for k, v in stats.items()}
    result.update(
        {"loss/policy": float(loss.detach()), "entropy": float(entropy), "skipped": skipped}
    )
    return result


def _critic_step(
    critic: Any, b: Batch, rows: Tensor, inputs: UpdateInputs, cfg: PPOConfig
) -> dict[str, float]:
    assert inputs.old_values is not None and inputs.returns is not None
    values = critic(b.input_ids[rows], b.attention_mask[rows])[:, :-1]  # (b, L-1)
    loss, stats = value_loss(
        values, inputs.old_values[rows], inputs.returns[rows], b.response_mask[rows],
        cfg.value_clip_eps,
    )  # fmt: skip
    critic.backward(loss)
    critic.step()
    result = {k: float(v) for k, v in stats.items()}
    result["loss/value"] = float(loss.detach())
    return result
