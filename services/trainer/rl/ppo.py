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
from services.trainer.data.episodes import Batch


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


def minibatch_advantages(
    advantages: Tensor, mask: Tensor, whiten_advantages: bool, distributed: bool = False
) -> Tensor:
    """The advantages one mini-batch trains on: (b, T) -> (b, T).

    Whitened, (A − mean) / std over the masked tokens of the whole mini-batch (all ranks'
    shares together when ``distributed``), if ``whiten_advantages``; else unchanged. The
    authors whiten VinePPO's and PPO's advantages this way (mean shift included, over the
    per-step global batch = one mini-batch in their paper configs).
    """
    if whiten_advantages:
        return whiten(advantages, mask, distributed=distributed)
    return advantages


def rank_rows(minibatch: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's contiguous 1/W share of a mini-batch's episode indices.

    With ``mini_batch_size`` a multiple of micro × W, the W shares split into exactly the
    micro-batches one process would use, so W ranks take the same optimizer step as one.
    """
    if len(minibatch) % world_size:
        raise ValueError(f"a mini-batch of {len(minibatch)} does not split over {world_size} ranks")
    per = len(minibatch) // world_size
    return minibatch[rank * per : (rank + 1) * per]


def _check_accumulation(engine: Any, cfg: PPOConfig, world_size: int) -> None:
    """DeepSpeed must step once per mini-batch: accumulation = mini / (micro × W)."""
    want = cfg.mini_batch_size // (cfg.micro_batch_size * world_size)
    got = getattr(engine, "gradient_accumulation_steps", None)
    if callable(got) and int(got()) != want:
        raise ValueError(
            f"the engine accumulates {int(got())} micro-batches per optimizer step but a "
            f"mini-batch of {cfg.mini_batch_size} over {world_size} ranks × micro-batch "
            f"{cfg.micro_batch_size} needs {want}"
        )


def ppo_epochs(
    policy: Any | None,
    critic: Any | None,
    inputs: UpdateInputs,
    cfg: PPOConfig,
    temperature: float,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Shuffled minibatch epochs; returns the mean of every logged statistic (over all
    micro-batches of all ranks). ``policy=None`` updates the critic alone (value warm-up).

    Every rank holds the whole batch and draws the same permutations from ``generator``.
    1) shuffle episodes; 2) per mini-batch, take this rank's 1/W share (`rank_rows`) and
    whiten advantages over the whole mini-batch (`minibatch_advantages`, all ranks); 3) per
    micro-batch, clipped policy loss + β·KL, backward, DeepSpeed step (the optimizer steps
    once per mini-batch: gradients are averaged over accumulation and ranks); 4) the same
    for the critic. The policy takes ``cfg.epochs`` passes, the critic ``cfg.critic_epochs``
    (default the same); with more critic epochs the extra passes update the critic alone.
    """
    if cfg.whiten_advantages == "auto":
        raise ValueError("ppo.whiten_advantages is 'auto': load the config through RunConfig")
    b = inputs.batch
    if b.size % cfg.mini_batch_size or cfg.mini_batch_size % (cfg.micro_batch_size * world_size):
        raise ValueError(
            f"{b.size} episodes must split into mini-batches of {cfg.mini_batch_size}, each "
            f"a multiple of micro-batch {cfg.micro_batch_size} × {world_size} ranks"
        )
    for engine in (policy, critic):
        if engine is not None:
            _check_accumulation(engine, cfg, world_size)
    policy_epochs = cfg.epochs if policy is not None else 0
    critic_epochs = (cfg.critic_epochs or cfg.epochs) if critic is not None else 0
    logs: dict[str, list[float]] = defaultdict(list)
    for epoch in range(max(policy_epochs, critic_epochs)):
        perm = torch.randperm(b.size, generator=generator)
        for mb in _micro(perm, cfg.mini_batch_size):
            mine = rank_rows(mb, rank, world_size)
            adv = minibatch_advantages(
                inputs.advantages[mine],
                b.response_mask[mine],
                bool(cfg.whiten_advantages),
                distributed=world_size > 1,
            )
            for part in _micro(torch.arange(len(mine)), cfg.micro_batch_size):
                rows = mine[part]
                stats: dict[str, float] = {}
                if epoch < policy_epochs:
                    stats = _policy_step(policy, b, rows, adv[part], inputs, cfg, temperature)
                if epoch < critic_epochs:
                    stats.update(_critic_step(critic, b, rows, inputs, cfg))
                for key, value in stats.items():
                    logs[key].append(value)
    return _mean_over_ranks({key: sum(v) / len(v) for key, v in logs.items()}, world_size)


def _mean_over_ranks(stats: dict[str, float], world_size: int) -> dict[str, float]:
    """Average every statistic over ranks (each rank ran the same number of micro-batches)."""
    if world_size == 1 or not stats:
        return stats
    import torch.distributed as dist

    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return {k: float(v) / world_size for k, v in zip(keys, values, strict=True)}


def _policy_step(
    policy: Any,
    b: Batch,
    rows: Tensor,
    adv: Tensor,
    inputs: UpdateInputs,
    cfg: PPOConfig,
    temperature: float,
) -> dict[str, float]:
    mask = b.response_mask[rows]
    out = policy(input_ids=b.input_ids[rows], attention_mask=b.attention_mask[rows])
    logits = out.logits[:, :-1].float()  # (b, L-1, V)
    logp = logprobs_from_logits(logits, b.input_ids[rows, 1:], temperature)
    loss, stats = policy_loss(
        logp,
        inputs.old_logprobs[rows],
        adv,
        mask,
        cfg.clip_eps,
        ref_logprobs=inputs.ref_logprobs[rows],
        kl_coef=cfg.kl_coef,
        kl_clamp=cfg.kl_clamp,
        kl_reduction=cfg.kl_reduction,
    )
    skipped = should_skip_update(stats["ratio/mean"], cfg.ratio_skip)
    if skipped:  # the authors skip an update whose mean ratio explodes
        loss = loss * 0.0
    policy.backward(loss)
    policy.step()
    with torch.no_grad():
        entropy = masked_mean(entropy_from_logits(logits.detach(), temperature), mask)
    result = {k: float(v) for k, v in stats.items()}
    result.update(
        {"loss/policy": float(loss.detach()), "entropy": float(entropy), "skipped": float(skipped)}
    )
    return result


def _critic_step(
    critic: Any, b: Batch, rows: Tensor, inputs: UpdateInputs, cfg: PPOConfig
) -> dict[str, float]:
    assert inputs.old_values is not None and inputs.returns is not None
    values = critic(b.input_ids[rows], b.attention_mask[rows])[:, :-1]  # (b, L-1)
    loss, stats = value_loss(
        values,
        inputs.old_values[rows],
        inputs.returns[rows],
        b.response_mask[rows],
        cfg.value_clip_eps,
    )
    critic.backward(loss)
    critic.step()
    result = {k: float(v) for k, v in stats.items()}
    result["loss/value"] = float(loss.detach())
    return result
