"""Advantage estimators, registered by name: ``vine``, ``gae``, ``grpo``, ``rloo``.

Every estimator has one signature: ``fn(inputs: AdvantageInputs) -> (advantages, extra)``
with ``advantages`` of shape (B, T) (zero outside the response mask) and ``extra`` a dict of
named tensors (e.g. ``returns`` for the value loss, ``step_advantages`` for VinePPO).
Look one up with `get_adv_estimator(name)`; an unknown name fails with the known names.
Equations: docs/algorithms.md, Step advantages, GAE with the critic, GRPO and RLOO advantages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AdvantageInputs:
    """What an estimator may need; each estimator checks the fields it uses are present."""

    rewards: Tensor
    """(B,) final reward R of each response (on its last token)."""
    response_mask: Tensor
    """(B, T) 1 on response tokens that are trained on, 0 on padding."""
    step_ids: Tensor | None = None
    """(B, T) long: reasoning-step index of every response token (``vine``); any value on
    padding (ignored)."""
    step_values: Tensor | None = None
    """(B, S) MC values V̂(s_0..s_{S-1}) of each response's step-start states (``vine``);
    s_0 is the prompt; entries past a response's step count are ignored."""
    num_steps: Tensor | None = None
    """(B,) long: number of steps m of each response (``vine``); default: max step id + 1."""
    next_step_values: Tensor | None = None
    """(B, S) ``vine``, optional: the values V̂(s_1..) that enter as the first term of
    A_i = V̂(s_{i+1}) − V̂(s_i); default ``step_values``. With ``vine.reuse_returns`` they hold
    the response's own return and ``step_values`` do not (`pooled_state_values`)."""
    mc_step_cap: int | None = None
    """``vine``: only s_0..s_cap were estimated; later states take the final reward R (so the
    steps after the cap get advantage 0), as in the authors' code. GSM8K uses 25; None = no
    cap."""
    values: Tensor | None = None
    """(B, T) critic values V(s_t) of the state before each response token (``gae``)."""
    gamma: float = 1.0
    """Discount (``gae``); the paper uses 1."""
    lam: float = 1.0
    """GAE λ (``gae``); the paper uses 1."""
    group_ids: Tensor | None = None
    """(B,) long: which prompt each response answers (``grpo``, ``rloo``)."""
    eps: float = 1e-6
    """Added to the group std in ``grpo``."""

    def need(self, name: str, field: str) -> Tensor:
        value: Tensor | None = getattr(self, field)
        if value is None:
            raise ValueError(f"advantage estimator {name!r} needs AdvantageInputs.{field}")
        return value


Estimator = Callable[[AdvantageInputs], tuple[Tensor, dict[str, Tensor]]]
ADV_ESTIMATORS: dict[str, Estimator] = {}


def register_adv_est(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator: make ``fn`` available as ``get_adv_estimator(name)``."""

    def deco(fn: Estimator) -> Estimator:
        if name in ADV_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADV_ESTIMATORS[name] = fn
        return fn

    return deco


def get_adv_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``; unknown names fail listing the known ones."""
    try:
        return ADV_ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ADV_ESTIMATORS))
        raise ValueError(f"unknown advantage estimator {name!r}; known: {known}") from None


def compute_advantages(name: str, inputs: AdvantageInputs) -> tuple[Tensor, dict[str, Tensor]]:
    """Shorthand for ``get_adv_estimator(name)(inputs)``."""
    return get_adv_estimator(name)(inputs)


# ----------------------------------------------------------------------------- vine
def vine_step_advantages(
    step_values: Tensor,
    rewards: Tensor,
    num_steps: Tensor,
    mc_step_cap: int | None = None,
    next_step_values: Tensor | None = None,
) -> Tensor:
    """A_i = V̂(s_{i+1}) − V̂(s_i) for i < m−1, A_{m−1} = R − V̂(s_{m−1})
    (docs/algorithms.md, Step advantages).

    step_values (B, S), rewards (B,), num_steps (B,) long -> step advantages (B, S), zero
    past each response's m steps. With a cap, V̂(s_i) := R for i > cap. ``next_step_values``
    (B, S), when given, supplies the first term V̂(s_{i+1}) in place of ``step_values``.
    """
    b, s = step_values.shape
    v = step_values.to(torch.float32)  # (B, S)
    w = v if next_step_values is None else next_step_values.to(v)  # (B, S) first terms
    r = rewards.to(v)[:, None]  # (B, 1)
    steps = torch.arange(s, device=v.device)[None, :]  # (1, S)
    if mc_step_cap is not None:
        v = torch.where(steps > mc_step_cap, r, v)  # states past the cap take R
        w = torch.where(steps > mc_step_cap, r, w)
    nxt = torch.cat([w[:, 1:], torch.zeros(b, 1, dtype=v.dtype, device=v.device)], dim=1)
    last = steps == (num_steps.to(v.device)[:, None] - 1)  # (B, S) the final step
    nxt = torch.where(last, r, nxt)  # V̂(s_m) replaced by the reward R
    valid = steps < num_steps.to(v.device)[:, None]  # (B, S)
    return torch.where(valid, nxt - v, torch.zeros_like(v))


@register_adv_est("vine")
def vine(inputs: AdvantageInputs) -> tuple[Tensor, dict[str, Tensor]]:
    """VinePPO: every token of step i gets the MC step advantage A_i."""
    step_ids = inputs.need("vine", "step_ids").long()  # (B, T)
    step_values = inputs.need("vine", "step_values")  # (B, S)
    mask = inputs.response_mask.to(torch.float32)  # (B, T)
    num_steps = inputs.num_steps
    if num_steps is None:
        num_steps = (torch.where(mask > 0, step_ids, -1).max(dim=1).values + 1).clamp(min=1)
    if int(num_steps.max()) > step_values.shape[1]:
        raise ValueError(
            f"a response has {int(num_steps.max())} steps but step_values has only "
            f"{step_values.shape[1]} columns"
        )
    step_adv = vine_step_advantages(
        step_values, inputs.rewards, num_steps, inputs.mc_step_cap, inputs.next_step_values
    )
    idx = step_ids.clamp(0, step_values.shape[1] - 1)  # (B, T)
    token_adv = step_adv.gather(1, idx) * mask  # (B, T)
    return token_adv, {"step_advantages": step_adv, "num_steps": num_steps}


# ----------------------------------------------------------------------------- gae
def token_rewards(rewards: Tensor, response_mask: Tensor) -> Tensor:
    """(B,) final rewards placed on each response's last masked token -> (B, T)."""
    mask = response_mask.to(torch.float32)  # (B, T)
    t = torch.arange(mask.shape[1], device=mask.device)[None, :]  # (1, T)
    last = torch.where(mask > 0, t, -1).max(dim=1).values  # (B,) index of last token
    out = torch.zeros_like(mask)
    has = last >= 0
    out[has, last[has]] = rewards.to(mask)[has]
    return out


@register_adv_est("gae")
def gae(inputs: AdvantageInputs) -> tuple[Tensor, dict[str, Tensor]]:
    """GAE (Schulman et al. 2016, eq. 16): δ_t = r_t + γV(s_{t+1}) − V(s_t), A_t = Σ(γλ)^l δ_{t+l};
    V after the last token is 0. Returns G_t = A_t + V(s_t) as ``returns``."""
    values = inputs.need("gae", "values").to(torch.float32)  # (B, T)
    mask = inputs.response_mask.to(torch.float32)  # (B, T)
    values = values * mask
    rew = token_rewards(inputs.rewards, mask)  # (B, T)
    gamma, lam = inputs.gamma, inputs.lam
    next_adv = torch.zeros_like(values[:, 0])  # (B,)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    adv_rev = []
    for t in reversed(range(values.shape[1])):
        delta = rew[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        m = mask[:, t]
        # padding keeps the carried values so left/right padding both work
        next_adv = torch.where(m > 0, adv_t, next_adv)
        next_value = torch.where(m > 0, values[:, t], next_value)
        adv_rev.append(adv_t * m)
    adv = torch.stack(adv_rev[::-1], dim=1)  # (B, T)
    returns = (adv + values) * mask
    return adv, {"returns": returns}


# ----------------------------------------------------------------------------- grpo / rloo
def _group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per response: (group size, group sum, group sum of squares), each (B,)."""
    _, inv = torch.unique(group_ids, return_inverse=True)  # (B,)
    g = int(inv.max()) + 1
    r = rewards.to(torch.float32)
    ones = torch.ones_like(r)
    size = torch.zeros(g, device=r.device).index_add_(0, inv, ones)
    total = torch.zeros(g, device=r.device).index_add_(0, inv, r)
    sq = torch.zeros(g, device=r.device).index_add_(0, inv, r * r)
    return size[inv], total[inv], sq[inv]


@register_adv_est("grpo")
def grpo(inputs: AdvantageInputs) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO: A = (R − mean_group) / (std_group + eps), std unbiased (n−1); every token gets A."""
    group_ids = inputs.need("grpo", "group_ids")
    r = inputs.rewards.to(torch.float32)  # (B,)
    n, total, sq = _group_stats(r, group_ids)
    mean = total / n
    var = ((sq - n * mean * mean) / (n - 1).clamp(min=1)).clamp(min=0)  # unbiased, as torch.std
    score = (r - mean) / (var.sqrt() + inputs.eps)  # (B,)
    mask = inputs.response_mask.to(torch.float32)
    return score[:, None] * mask, {"sequence_advantages": score}


@register_adv_est("rloo")
def rloo(inputs: AdvantageInputs) -> tuple[Tensor, dict[str, Tensor]]:
    """RLOO: A = R − mean of the other n−1 responses of the same prompt (0 if n = 1)."""
    group_ids = inputs.need("rloo", "group_ids")
    r = inputs.rewards.to(torch.float32)  # (B,)
    n, total, _ = _group_stats(r, group_ids)
    others = (total - r) / (n - 1).clamp(min=1)
    score = torch.where(n > 1, r - others, torch.zeros_like(r))  # (B,)
    mask = inputs.response_mask.to(torch.float32)
    return score[:, None] * mask, {"sequence_advantages": score}
