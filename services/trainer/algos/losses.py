"""Losses and their building blocks, as pure tensor functions (equations: docs/algorithms.md,
PPO's clipped loss and the KL penalty; GAE with the critic).

Shapes: B responses, T response tokens, V vocabulary. ``mask`` is (B, T), 1 on tokens that
count. Every loss returns ``(scalar_loss, stats)`` where stats are detached scalars named
like the metrics (``clipfrac``, ``ratio/mean``, ...).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

KLReduction = Literal["sequence_sum", "token_mean"]
"""How the per-token k3 KL enters the loss: ``sequence_sum`` = Σ_t over each response,
averaged over responses (the authors' code); ``token_mean`` = mean over all masked tokens."""


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·mask over ``dim`` (all if None)."""
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·mask / Σ mask (0 where the mask is empty)."""
    m = mask.to(x.dtype)
    return masked_sum(x, m, dim) / (m.sum() if dim is None else m.sum(dim=dim)).clamp(min=1)


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) gathered at ``tokens``: (B, T, V), (B, T) -> (B, T).

    The PPO ratio uses the sampling temperature (VinePPO paper, appendix C.3)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """H(softmax(logits / temperature)) per position: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return -(logp.exp() * logp).sum(dim=-1)


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor, clamp: float = 10.0) -> Tensor:
    """k3 estimator of KL[π_θ ‖ π_ref] per token: π_ref/π_θ − log(π_ref/π_θ) − 1, in [0, clamp].

    logprobs, ref_logprobs (B, T) -> (B, T) (Schulman 2020, "Approximating KL divergence")."""
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)  # log π_ref/π_θ, kept finite
    kl = log_ratio.exp() - log_ratio - 1.0
    return kl.clamp(0.0, clamp)


def kl_penalty(kl: Tensor, mask: Tensor, reduction: KLReduction = "sequence_sum") -> Tensor:
    """The KL term of the loss (before β) from per-token KL estimates: (B, T) -> scalar.

    ``sequence_sum``: (1/B)·Σ_b Σ_t kl_bt·m_bt, the authors' form (a response's KL is the sum
    over its tokens); ``token_mean``: Σ kl·m / Σ m, about L× smaller for L-token responses.
    """
    if reduction == "sequence_sum":
        return masked_sum(kl, mask, dim=1).mean()
    if reduction == "token_mean":
        return masked_mean(kl, mask)
    raise ValueError(f"unknown kl_reduction {reduction!r}; known: sequence_sum, token_mean")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_clamp: float = 10.0,
    kl_reduction: KLReduction = "sequence_sum",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped objective (masked token mean) + β·KL term; inputs (B, T)
    (docs/algorithms.md, PPO's clipped loss and the KL penalty).

    L = mean_t max(−A·r, −A·clip(r, 1−ε, 1+ε)) + β·`kl_penalty`(k3(π_θ, π_ref), kl_reduction),
    r = π_θ/π_θk. Stats: ``kl/ref`` (k3 per token), ``kl/ref_seq`` (Σ_t k3 per response).
    """
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    pg_loss = torch.max(pg_loss1, pg_loss2)  # (B, T)
    loss = masked_mean(pg_loss, mask)
    stats: dict[str, Tensor] = {}
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs, kl_clamp)  # (B, T)
        loss = loss + kl_coef * kl_penalty(kl, mask, kl_reduction)
        stats["kl/ref"] = masked_mean(kl, mask).detach()
        stats["kl/ref_seq"] = masked_sum(kl, mask, dim=1).mean().detach()
    with torch.no_grad():
        stats["loss/pg"] = masked_mean(pg_loss, mask)
        stats["clipfrac"] = masked_mean((pg_loss2 > pg_loss1).float(), mask)
        stats["ratio/mean"] = masked_mean(ratio, mask)
        stats["kl/old"] = masked_mean(0.5 * log_ratio.pow(2), mask)  # approx KL[π_θk ‖ π_θ]
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ½·max((V−G)², (clip(V, V_old±ε′)−G)²), masked mean; inputs (B, T)."""
    v_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    vf_loss1 = (values - returns).pow(2)
    vf_loss2 = (v_clipped - returns).pow(2)
    vf_loss = 0.5 * torch.max(vf_loss1, vf_loss2)  # (B, T)
    loss = masked_mean(vf_loss, mask)
    with torch.no_grad():
        stats = {
            "value/clipfrac": masked_mean((vf_loss2 > vf_loss1).float(), mask),
            "value/mae": masked_mean((values - returns).abs(), mask),
        }
    return loss, stats


def should_skip_update(ratio_mean: Tensor | float, threshold: float = 10.0) -> bool:
    """True when the mean ratio π_θ/π_θk exceeds ``threshold`` (the authors skip that step)."""
    return float(ratio_mean) > threshold


def whiten(
    x: Tensor,
    mask: Tensor,
    group: object | None = None,
    distributed: bool = False,
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the masked entries of the whole batch: (B, T) -> (B, T).

    With ``distributed=True`` the sums are all-reduced over ``group`` (None = world) so every
    rank uses the global mean and unbiased variance, as one process holding all the data would.
    """
    m = mask.to(torch.float64)
    xd = x.to(torch.float64)
    stats = torch.stack([(xd * m).sum(), (xd * xd * m).sum(), m.sum()])  # (3,)
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
    total, total_sq, count = stats.unbind()
    if count < 2:
        raise ValueError(f"whitening needs at least 2 masked entries, got {int(count)}")
    mean = total / count
    var = (total_sq - count * mean * mean).clamp(min=0) / (count - 1)  # unbiased
    out = (xd - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return (out * m).to(x.dtype)


def dpo_positive_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    lam: float = 50.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO-Positive (Pal et al. 2024, eq. 3): sequence log-probs (B,) -> mean loss.

    −log σ(β·(Δ_w − Δ_l − λ·max(0, log π_ref(y_w) − log π_θ(y_w)))), Δ = log π_θ − log π_ref.
    λ sits inside β, as in Pal et al., the VinePPO authors' trainer and TRL's ``use_dpop``:
    a chosen response that fell δ below π_ref lowers the logit by β·λ·δ.
    """
    delta_w = chosen_logps - ref_chosen_logps  # (B,)
    delta_l = rejected_logps - ref_rejected_logps  # (B,)
    penalty = (ref_chosen_logps - chosen_logps).clamp(min=0)  # (B,)
    logits = beta * (delta_w - delta_l - lam * penalty)  # (B,)
    losses = -F.logsigmoid(logits)  # (B,)
    with torch.no_grad():
        stats = {
            "dpo/penalty": penalty.mean(),
            "dpo/accuracy": (delta_w > delta_l).float().mean(),
            "dpo/margin": (delta_w - delta_l).mean(),
        }
    return losses.mean(), stats
