"""Which step-boundary states VinePPO must value, deduplicated, and the scatter back.

For a response cut into steps with character spans ``[(0, e_0), (e_0, e_1), ...]`` the
states are s_i = prompt + response[:start of step i], i = 0..m−1 (s_0 = the prompt). States
that are identical text — s_0 of every response to one prompt, or equal prefixes — are
estimated once (docs/algorithms.md, MC value estimates). With a cap c (25 for GSM8K) only
s_0..s_c are asked for, as in the authors' code (26 states at c = 25);
`scatter_state_values` fills the later ones with the response's final reward, so the steps
from c + 1 on get advantage 0 (docs/algorithms.md, MC budget rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Span = tuple[int, int]


@dataclass(frozen=True)
class StatePlan:
    """The unique states to estimate and, per response and step, which one it is."""

    states: list[tuple[str, str]]
    """Unique (prompt, partial_response) pairs, in first-seen order."""
    index: list[list[int]]
    """index[b][i] = position in ``states`` of response b's state s_i, or -1 if capped."""
    num_steps: list[int]
    """m of each response (number of steps, at least 1)."""

    @property
    def max_steps(self) -> int:
        return max(self.num_steps, default=0)


def plan_states(
    prompts: Sequence[str],
    responses: Sequence[str],
    spans: Sequence[Sequence[Span]],
    mc_step_cap: int | None = None,
) -> StatePlan:
    """Unique states s_i = (prompt_b, response_b[:spans_b[i][0]]) over a batch of responses."""
    if not len(prompts) == len(responses) == len(spans):
        raise ValueError(
            f"prompts, responses and spans differ in length: "
            f"{len(prompts)}, {len(responses)}, {len(spans)}"
        )
    if mc_step_cap is not None and mc_step_cap < 1:
        raise ValueError(f"mc_step_cap must be >= 1 or None, got {mc_step_cap}")
    seen: dict[tuple[str, str], int] = {}
    index: list[list[int]] = []
    num_steps: list[int] = []
    for prompt, response, sp in zip(prompts, responses, spans, strict=True):
        starts = [start for start, _ in sp] or [0]  # an empty response is one step
        row = []
        for i, start in enumerate(starts):
            if mc_step_cap is not None and i > mc_step_cap:
                row.append(-1)
                continue
            key = (prompt, response[:start])
            row.append(seen.setdefault(key, len(seen)))
        index.append(row)
        num_steps.append(len(starts))
    return StatePlan(states=list(seen), index=index, num_steps=num_steps)


def index_tensor(plan: StatePlan) -> Tensor:
    """``plan.index`` as a (B, S) long tensor: the state of each response's step, −1 where
    capped, −2 past the response's steps."""
    idx = torch.full((len(plan.index), plan.max_steps), -2, dtype=torch.long)
    for row, ids in enumerate(plan.index):
        idx[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return idx


def scatter_state_values(plan: StatePlan, estimates: Tensor, rewards: Tensor) -> Tensor:
    """estimates (U,) of ``plan.states`` and rewards (B,) -> step_values (B, S).

    Capped states (index −1) take the response's reward R; columns past a response's
    steps are 0 (ignored by ``vine``).
    """
    if estimates.shape != (len(plan.states),):
        raise ValueError(
            f"expected {len(plan.states)} estimates (one per unique state), "
            f"got shape {tuple(estimates.shape)}"
        )
    b, s = len(plan.index), plan.max_steps
    idx = index_tensor(plan)
    est = estimates.to(torch.float32)
    gathered = est[idx.clamp(min=0)] if len(plan.states) else torch.zeros(b, s)  # (B, S)
    r = rewards.to(torch.float32)[:, None].expand(b, s)
    out = torch.where(idx == -1, r, gathered)
    return torch.where(idx == -2, torch.zeros_like(out), out)


def num_steps_tensor(plan: StatePlan) -> Tensor:
    """(B,) long step counts of a plan."""
    return torch.tensor(plan.num_steps, dtype=torch.long)


def state_passes(plan: StatePlan) -> list[int]:
    """How many responses of the batch pass through each unique state (capped ones aside)."""
    passes = [0] * len(plan.states)
    for ids in plan.index:
        for u in ids:
            if u >= 0:
                passes[u] += 1
    return passes


def mc_budget(plan: StatePlan, k: int) -> list[int]:
    """MC continuations to sample per unique state when the batch's returns are reused: a
    state that n responses pass through already holds n − 1 returns that are not a given
    response's own, so it needs only max(k − (n − 1), 0) more for every baseline to rest on
    at least k samples; a state only one response passes through gets k."""
    return [max(k - (n - 1), 0) for n in state_passes(plan)]


def pooled_state_values(
    plan: StatePlan, mc_values: Tensor, mc_k: Tensor, rewards: Tensor
) -> tuple[Tensor, Tensor]:
    """The batch's returns pooled with the MC samples of every state: (next, baseline), each
    (B, S) like `scatter_state_values`.

    For a state u with k_u MC samples of mean V̂_u, passed through by the responses E(u) with
    returns R_e (n_u of them, S_u their sum):
      next[b, i]     = (k_u V̂_u + S_u) / (k_u + n_u)              u = s_i of b, own R included
      baseline[b, i] = (k_u V̂_u + S_u − R_b) / (k_u + n_u − 1)     own R left out
    ``next`` may only enter A_{i−1} = V(s_i) − V(s_{i−1}) (the value of the state an action led
    to: R_b is a sample of it given that action); ``baseline`` enters as the −V(s_i) of A_i,
    which must not depend on the action taken at s_i, and R_b does
    (docs/algorithms.md, Reusing the batch's returns). mc_values, mc_k (U,), rewards (B,).
    """
    u = len(plan.states)
    if mc_values.shape != (u,) or mc_k.shape != (u,):
        raise ValueError(
            f"expected mc_values and mc_k of shape ({u},), got "
            f"{tuple(mc_values.shape)} and {tuple(mc_k.shape)}"
        )
    b, s = len(plan.index), plan.max_steps
    idx = index_tensor(plan)
    r = rewards.to(torch.float32)[:, None].expand(b, s)  # (B, S)
    seen = idx >= 0
    flat = idx.clamp(min=0)[seen]
    n = torch.zeros(u).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
    total = torch.zeros(u).index_add_(0, flat, r[seen])  # (U,) sum of returns through u
    k = mc_k.to(torch.float32)
    mc_sum = k * mc_values.to(torch.float32)  # (U,)
    if bool(((k + n - 1)[n > 0] < 1).any()):
        raise ValueError("a state passed through once needs at least one MC sample")
    g = idx.clamp(min=0)
    nxt = (mc_sum + total)[g] / (k + n)[g].clamp(min=1)
    base = (mc_sum + total)[g].sub(r) / (k + n - 1)[g].clamp(min=1)
    zero = torch.zeros_like(r)
    nxt = torch.where(idx == -1, r, torch.where(idx == -2, zero, nxt))
    base = torch.where(idx == -1, r, torch.where(idx == -2, zero, base))
    return nxt, base
