"""Advantage estimators against hand computations and slow loop references."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from services.trainer.algos import (
    AdvantageInputs,
    compute_advantages,
    get_adv_estimator,
    plan_states,
    scatter_state_values,
)
from services.trainer.algos.advantages import vine_step_advantages


def test_unknown_estimator_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"known: gae, grpo, rloo, vine"):
        get_adv_estimator("nope")


def test_missing_field_is_named() -> None:
    inputs = AdvantageInputs(rewards=torch.ones(1), response_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="step_ids"):
        compute_advantages("vine", inputs)


# ----------------------------------------------------------------------------- vine
def test_vine_design_example() -> None:
    # docs/algorithms.md, Step advantages: values [0.2, 0.2, 0.8, 0.8], R = 1
    # -> step advantages [0.0, 0.6, 0.0, 0.2]
    step_ids = torch.tensor([[0, 0, 1, 2, 2, 2, 3, 0]])  # 7 response tokens, 1 pad
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    inputs = AdvantageInputs(
        rewards=torch.tensor([1.0]),
        response_mask=mask,
        step_ids=step_ids,
        step_values=torch.tensor([[0.2, 0.2, 0.8, 0.8]]),
    )
    adv, extra = compute_advantages("vine", inputs)
    torch.testing.assert_close(extra["step_advantages"], torch.tensor([[0.0, 0.6, 0.0, 0.2]]))
    expected = torch.tensor([[0.0, 0.0, 0.6, 0.0, 0.0, 0.0, 0.2, 0.0]])
    torch.testing.assert_close(adv, expected)


def _vine_loop(step_values, rewards, step_ids, mask, cap=None):
    out = []
    for b in range(len(rewards)):
        ids = [int(i) for i, m in zip(step_ids[b], mask[b], strict=True) if m]
        m = max(ids) + 1
        v = [float(x) for x in step_values[b][:m]]
        if cap is not None:
            v = [float(rewards[b]) if i > cap else x for i, x in enumerate(v)]
        a = [v[i + 1] - v[i] for i in range(m - 1)] + [float(rewards[b]) - v[m - 1]]
        out.append([a[int(i)] if mm else 0.0 for i, mm in zip(step_ids[b], mask[b], strict=True)])
    return torch.tensor(out)


@pytest.mark.parametrize("cap", [None, 2])
def test_vine_matches_loop(cap: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    b, t, s = 6, 12, 5
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    steps_per = torch.randint(1, s + 1, (b,), generator=g)
    step_ids = torch.zeros(b, t, dtype=torch.long)
    for i in range(b):  # non-decreasing step ids hitting every step 0..m-1
        m = int(min(steps_per[i], lengths[i]))
        n = int(lengths[i])
        step_ids[i, :n] = torch.arange(n) * m // n
    vals = torch.rand(b, s, generator=g)
    rewards = torch.randint(0, 2, (b,), generator=g).float()
    inputs = AdvantageInputs(rewards, mask, step_ids=step_ids, step_values=vals, mc_step_cap=cap)
    adv, _ = compute_advantages("vine", inputs)
    torch.testing.assert_close(adv, _vine_loop(vals, rewards, step_ids, mask, cap))


def test_vine_cap_zeroes_later_steps() -> None:
    # 5 steps, cap 2: s_0..s_2 estimated (the authors' rule: s_0..s_cap), s_3 and s_4 take
    # R = 1 -> A = [v1 - v0, v2 - v1, R - v2, 0, 0]
    adv = vine_step_advantages(
        torch.tensor([[0.5, 0.25, 0.9, 0.1, 0.3]]), torch.tensor([1.0]), torch.tensor([5]), 2
    )
    torch.testing.assert_close(adv, torch.tensor([[-0.25, 0.65, 0.1, 0.0, 0.0]]))


def test_vine_cap_25_estimates_26_states() -> None:
    # the authors' GSM8K config: cap 25 estimates s_0..s_25, so a 27-step response has
    # non-zero advantages on steps 0..25 and 0 on step 26 only
    m = 27
    values = torch.full((1, m), 0.5)
    adv = vine_step_advantages(values, torch.tensor([0.0]), torch.tensor([m]), 25)
    assert adv[0, 25] == -0.5 and (adv[0, :25] == 0).all() and adv[0, 26] == 0
    plan = plan_states(["P"], ["x\n" * m], [[(2 * i, 2 * i + 2) for i in range(m)]], 25)
    assert len(plan.states) == 26 and plan.index[0][25] == 25 and plan.index[0][26] == -1


def test_vine_too_few_value_columns() -> None:
    inputs = AdvantageInputs(
        torch.ones(1),
        torch.ones(1, 3),
        step_ids=torch.tensor([[0, 1, 2]]),
        step_values=torch.zeros(1, 2),
    )
    with pytest.raises(ValueError, match="3 steps"):
        compute_advantages("vine", inputs)


# ----------------------------------------------------------------------------- states
def test_shared_prefix_states_estimated_once() -> None:
    prompts = ["P1", "P1", "P1", "P2"]
    responses = ["a\nb\n#### 1", "a\nc\n", "x\n", "a\n"]
    spans = [[(0, 2), (2, 10)], [(0, 2), (2, 4)], [(0, 2)], [(0, 2)]]
    plan = plan_states(prompts, responses, spans)
    # s_0 of P1 once, ("P1", "a\n") shared by responses 0 and 1, s_0 of P2 once
    assert plan.states == [("P1", ""), ("P1", "a\n"), ("P2", "")]
    assert plan.index == [[0, 1], [0, 1], [0], [2]]
    assert plan.num_steps == [2, 2, 1, 1]
    vals = scatter_state_values(plan, torch.tensor([0.5, 0.75, 0.25]), torch.ones(4))
    torch.testing.assert_close(
        vals, torch.tensor([[0.5, 0.75], [0.5, 0.75], [0.5, 0.0], [0.25, 0.0]])
    )


def test_state_cap_fills_reward() -> None:
    plan = plan_states(["P"], ["a\nb\nc\n"], [[(0, 2), (2, 4), (4, 6)]], mc_step_cap=1)
    assert plan.states == [("P", ""), ("P", "a\n")]
    assert plan.index == [[0, 1, -1]]
    vals = scatter_state_values(plan, torch.tensor([0.5, 0.5]), torch.tensor([1.0]))
    torch.testing.assert_close(vals, torch.tensor([[0.5, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="one per unique state"):
        scatter_state_values(plan, torch.zeros(3), torch.ones(1))


# ----------------------------------------------------------------------------- gae
def _gae_loop(values, rewards, lengths, gamma, lam):
    out = torch.zeros_like(values)
    for b, n in enumerate(lengths):
        last_adv = 0.0
        for t in reversed(range(n)):
            next_v = float(values[b, t + 1]) if t + 1 < n else 0.0
            r = float(rewards[b]) if t == n - 1 else 0.0
            delta = r + gamma * next_v - float(values[b, t])
            last_adv = delta + gamma * lam * last_adv
            out[b, t] = last_adv
    return out


def test_gae_hand_computed() -> None:
    # γ = λ = 1: A_t = R − V(s_t); returns G_t = R
    values = torch.tensor([[0.1, 0.4, 0.7, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, extra = compute_advantages(
        "gae", AdvantageInputs(torch.tensor([1.0]), mask, values=values)
    )
    torch.testing.assert_close(adv, torch.tensor([[0.9, 0.6, 0.3, 0.0]]))
    torch.testing.assert_close(extra["returns"], torch.tensor([[1.0, 1.0, 1.0, 0.0]]))


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.9, 0.95), (1.0, 0.5)])
def test_gae_matches_loop(gamma: float, lam: float) -> None:
    g = torch.Generator().manual_seed(1)
    values = torch.rand(5, 9, generator=g)
    lengths = [9, 1, 4, 7, 3]
    mask = (torch.arange(9)[None] < torch.tensor(lengths)[:, None]).long()
    rewards = torch.randint(0, 2, (5,), generator=g).float()
    inp = AdvantageInputs(rewards, mask, values=values, gamma=gamma, lam=lam)
    adv, extra = compute_advantages("gae", inp)
    ref = _gae_loop(values, rewards, lengths, gamma, lam)
    torch.testing.assert_close(adv, ref)
    torch.testing.assert_close(extra["returns"], (ref + values) * mask)


# ----------------------------------------------------------------------------- grpo / rloo
def test_grpo_rloo_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])
    inp = AdvantageInputs(rewards, mask, group_ids=torch.zeros(4, dtype=torch.long), eps=0.0)
    # mean 0.5; unbiased std = sqrt((4 * 0.25) / 3) = 1/sqrt(3); A = ±0.5 * sqrt(3)
    a = 0.5 * math.sqrt(3)
    adv, _ = compute_advantages("grpo", inp)
    torch.testing.assert_close(adv, torch.tensor([[a, a], [-a, 0.0], [-a, -a], [a, a]]))
    # RLOO: R=1 -> 1 - (0+0+1)/3 = 2/3; R=0 -> 0 - (1+0+1)/3 = -2/3
    adv, _ = compute_advantages("rloo", inp)
    b = 2 / 3
    torch.testing.assert_close(adv, torch.tensor([[b, b], [-b, 0.0], [-b, -b], [b, b]]))


def test_grpo_rloo_match_loop_over_groups() -> None:
    g = torch.Generator().manual_seed(2)
    group_ids = torch.tensor([3, 3, 3, 7, 7, 1, 1, 1, 1, 9])
    rewards = torch.rand(10, generator=g)
    mask = torch.ones(10, 3)
    inp = AdvantageInputs(rewards, mask, group_ids=group_ids, eps=1e-6)
    grpo_adv, _ = compute_advantages("grpo", inp)
    rloo_adv, _ = compute_advantages("rloo", inp)
    for i in range(10):
        grp = [float(rewards[j]) for j in range(10) if group_ids[j] == group_ids[i]]
        r = float(rewards[i])
        std = statistics.stdev(grp) if len(grp) > 1 else 0.0
        others = [x for x in grp]
        others.remove(r)
        expect_rloo = r - statistics.mean(others) if others else 0.0
        assert grpo_adv[i, 0].item() == pytest.approx((r - statistics.mean(grp)) / (std + 1e-6))
        assert rloo_adv[i, 1].item() == pytest.approx(expect_rloo, abs=1e-6)


# ----------------------------------------------------------------------------- whitening
# What a mini-batch trains on (`ppo.minibatch_advantages`), per method's default
# (`config.WHITEN_BY_ALGO`): vine/ppo whitened (mean shift included, as the authors), grpo/rloo
# as their definitions give them.
def _two_groups() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group 0 all wrong (2 responses of 2 tokens); group 1: right (1 token), wrong (3)."""
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    return torch.tensor([0.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1]), mask


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_all_wrong_group_gets_zero_push_by_default(algo: str) -> None:
    from services.trainer.config import RunConfig
    from services.trainer.rl.ppo import minibatch_advantages

    rewards, groups, mask = _two_groups()
    adv, _ = compute_advantages(algo, AdvantageInputs(rewards, mask, group_ids=groups))
    whiten = RunConfig(algo=algo).ppo.whiten_advantages
    assert whiten is False
    used = minibatch_advantages(adv, mask, whiten)
    assert torch.equal(used[:2], torch.zeros(2, 3))  # all-wrong group: no push at all
    # group 1: GRPO ±1/√2 (unbiased std of {1, 0}), RLOO ±1, on every token of the response
    a = 1 / math.sqrt(2) if algo == "grpo" else 1.0
    torch.testing.assert_close(used[2:], torch.tensor([[a, 0, 0], [-a, -a, -a]]), atol=1e-5, rtol=0)
    # whitening again (the old behaviour) would push the all-wrong group's 4 tokens:
    # token mean (a − 3a)/8 = −a/4 ≠ 0, so they get +a/4 / std > 0
    again = minibatch_advantages(adv, mask, True)
    values = [a, -a, -a, -a, 0.0, 0.0, 0.0, 0.0]
    mu, sd = statistics.mean(values), statistics.stdev(values)
    assert again[0, 0].item() == pytest.approx((0 - mu) / sd, rel=1e-5) and mu == -a / 4


def test_vine_advantages_whitened_with_mean_shift_by_hand() -> None:
    from services.trainer.config import RunConfig
    from services.trainer.rl.ppo import minibatch_advantages

    # vine token advantages: mostly 0; the authors whiten them with the mean shift
    adv = torch.tensor([[0.0, 0.0, 0.6], [0.0, 0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert RunConfig(algo="vine").ppo.whiten_advantages is True
    assert RunConfig(algo="ppo").ppo.whiten_advantages is True
    used = minibatch_advantages(adv, mask, True)
    values = [0.0, 0.0, 0.6, 0.0, 0.2]  # mean 0.16, unbiased std 0.26077
    mu, sd = statistics.mean(values), statistics.stdev(values)
    want = torch.tensor([[-mu / sd, -mu / sd, (0.6 - mu) / sd], [-mu / sd, (0.2 - mu) / sd, 0]])
    torch.testing.assert_close(used, want, atol=1e-5, rtol=0)  # zero steps become −0.61
    assert torch.equal(minibatch_advantages(adv, mask, False), adv)


def test_ppo_epochs_refuses_unresolved_whitening() -> None:
    from services.trainer.config import PPOConfig
    from services.trainer.rl.ppo import UpdateInputs, ppo_epochs

    with pytest.raises(ValueError, match="RunConfig"):
        ppo_epochs(
            None,
            None,
            UpdateInputs(None, None, None, None),
            PPOConfig(),
            1.0,  # type: ignore[arg-type]
            torch.Generator(),
        )
