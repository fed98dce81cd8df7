"""Reusing the batch's returns as MC samples (``vine.reuse_returns``): a hand computation,
and a simulation showing the policy gradient stays unbiased — and that putting a response's
own return into its baseline, the tempting mistake, biases it (docs/algorithms.md, Reusing
the batch's returns)."""

from __future__ import annotations

import pytest
import torch

from services.trainer.algos.advantages import vine_step_advantages
from services.trainer.algos.states import (
    StatePlan,
    mc_budget,
    plan_states,
    pooled_state_values,
    scatter_state_values,
)


def test_pooled_values_by_hand() -> None:
    # three responses to P; two pass through ("P", "a\n"); k = 2 MC samples per state
    plan = plan_states(
        ["P"] * 3, ["a\nb\n", "a\nc\n", "x\n"], [[(0, 2), (2, 4)], [(0, 2), (2, 4)], [(0, 2)]]
    )
    assert plan.states == [("P", ""), ("P", "a\n")] and mc_budget(plan, 2) == [0, 1]
    rewards = torch.tensor([1.0, 0.0, 1.0])
    mc_values, mc_k = torch.tensor([0.0, 0.5]), torch.tensor([0, 1])
    nxt, base = pooled_state_values(plan, mc_values, mc_k, rewards)
    # s_0: no MC, returns 1, 0, 1 (sum 2): next = 2/3; baseline = the other two's mean
    # ("P", "a\n"): one MC sample of 0.5 and returns 1, 0: next = 1.5/3, baseline leaves own out
    torch.testing.assert_close(nxt, torch.tensor([[2 / 3, 0.5], [2 / 3, 0.5], [2 / 3, 0.0]]))
    torch.testing.assert_close(base, torch.tensor([[0.5, 0.25], [1.0, 0.75], [0.5, 0.0]]))
    adv = vine_step_advantages(base, rewards, torch.tensor(plan.num_steps), None, nxt)
    # response 0: A_0 = next(s_1) − base(s_0) = 0.5 − 0.5, A_1 = R − base(s_1) = 1 − 0.25
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.75], [-0.5, -0.75], [0.5, 0.0]]))


def test_a_state_passed_once_needs_an_mc_sample() -> None:
    plan = plan_states(["P"], ["a\n"], [[(0, 2)]])
    with pytest.raises(ValueError, match="at least one MC sample"):
        pooled_state_values(plan, torch.zeros(1), torch.zeros(1), torch.ones(1))


# A two-step tree: at s_0 choose a_0 ~ Bernoulli(sigmoid(θ_0)), at s_1 = (a_0) choose
# a_1 ~ Bernoulli(sigmoid(θ_{1, a_0})), reward REWARD[a_0][a_1]. The exact gradient of
# J = E[R] is compared with the mean of Σ_i ∇log π(a_i | s_i) A_i over many groups of N.
THETA = torch.tensor([0.3, -0.4, 0.8])
REWARD = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
N, K, GROUPS = 4, 3, 20_000


def _exact_gradient() -> torch.Tensor:
    theta = THETA.clone().requires_grad_(True)
    p0, p1 = torch.sigmoid(theta[0]), torch.sigmoid(theta[1:])
    j = sum(
        (p0 if a0 else 1 - p0) * (p1[a0] if a1 else 1 - p1[a0]) * REWARD[a0, a1]
        for a0 in (0, 1)
        for a1 in (0, 1)
    )
    (grad,) = torch.autograd.grad(j, theta)
    return grad


def _sample(gen: torch.Generator, a0: torch.Tensor) -> torch.Tensor:
    """a_1 for each a_0, and the reward."""
    p1 = torch.sigmoid(THETA[1:])[a0]
    a1 = (torch.rand(a0.shape, generator=gen) < p1).long()
    return REWARD[a0, a1]


def _mc_values(gen: torch.Generator, plan: StatePlan, k: list[int]) -> torch.Tensor:
    """Mean of k[u] fresh returns from every state (0 where k[u] = 0)."""
    out = torch.zeros(len(plan.states))
    for u, (_, partial) in enumerate(plan.states):
        if k[u] == 0:
            continue
        if partial:  # s_1: a_0 is fixed
            a0 = torch.full((k[u],), int(partial[0]))
        else:
            a0 = (torch.rand(k[u], generator=gen) < torch.sigmoid(THETA[0])).long()
        out[u] = _sample(gen, a0).mean()
    return out


def _gradient_estimates(mode: str, seed: int = 0) -> tuple[torch.Tensor, int]:
    """(GROUPS, 3): the per-group policy-gradient estimate of one estimator, and the MC
    samples it drew."""
    gen = torch.Generator().manual_seed(seed)
    a0 = (torch.rand(GROUPS * N, generator=gen) < torch.sigmoid(THETA[0])).long()
    p1 = torch.sigmoid(THETA[1:])[a0]
    a1 = (torch.rand(GROUPS * N, generator=gen) < p1).long()
    rewards = REWARD[a0, a1]
    responses = [f"{x}\n{y}\n" for x, y in zip(a0.tolist(), a1.tolist(), strict=True)]
    prompts = [f"P{g}" for g in range(GROUPS) for _ in range(N)]
    plan = plan_states(prompts, responses, [[(0, 2), (2, 4)]] * len(responses))
    steps = torch.tensor(plan.num_steps)
    if mode == "fixed":
        k = [K] * len(plan.states)
        values = scatter_state_values(plan, _mc_values(gen, plan, k), rewards)
        adv = vine_step_advantages(values, rewards, steps)
    else:
        k = mc_budget(plan, K)
        nxt, base = pooled_state_values(plan, _mc_values(gen, plan, k), torch.tensor(k), rewards)
        if mode == "own-return-in-baseline":  # the mistake: the same pooled value both times
            base = nxt
        adv = vine_step_advantages(base, rewards, steps, None, nxt)
    score0 = (a0 - torch.sigmoid(THETA[0])) * adv[:, 0]  # ∇_θ0 log π(a_0) A_0
    score1 = (a1 - p1) * adv[:, 1]
    per = torch.stack([score0, score1 * (a0 == 0), score1 * (a0 == 1)], dim=1)  # (B, 3)
    return per.view(GROUPS, N, 3).mean(dim=1), sum(k)


@pytest.mark.parametrize("mode", ["fixed", "reuse"])
def test_reusing_returns_keeps_the_policy_gradient_unbiased(mode: str) -> None:
    est, _ = _gradient_estimates(mode)
    mean, se = est.mean(dim=0), est.std(dim=0) / GROUPS**0.5
    exact = _exact_gradient()
    assert ((mean - exact).abs() < 4 * se).all(), (mean, exact, se)


def test_own_return_in_the_baseline_biases_it() -> None:
    wrong, _ = _gradient_estimates("own-return-in-baseline")
    mean, se = wrong.mean(dim=0), wrong.std(dim=0) / GROUPS**0.5
    assert ((mean - _exact_gradient()).abs() > 6 * se).any(), (mean, se)


def test_reuse_draws_fewer_mc_samples_at_a_similar_variance() -> None:
    # s_0 (shared by all N = K + 1 responses) needs no MC at all, and a shared s_1 fewer; the
    # first step's gradient gets less noisy (its V̂(s_1) pools MC and returns), the second's a
    # little noisier (leave-one-out baselines correlate the responses of a group, as RLOO's)
    (fixed, k_fixed), (reuse, k_reuse) = _gradient_estimates("fixed"), _gradient_estimates("reuse")
    assert k_reuse < 0.6 * k_fixed, (k_reuse, k_fixed)
    ratio = reuse.var(dim=0) / fixed.var(dim=0)
    assert ratio[0] < 0.8 and (ratio[1:] < 1.25).all(), ratio
