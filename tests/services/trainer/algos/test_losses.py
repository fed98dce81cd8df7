"""Losses against hand computations and slow loop references; whitening across 2 ranks."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from services.trainer.algos import losses as L
from tests.support import free_port


def test_masked_mean_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert L.masked_mean(x, mask).item() == pytest.approx(7 / 3)
    torch.testing.assert_close(L.masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    assert L.masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_logprobs_and_entropy_against_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    tokens = torch.randint(0, 5, (2, 3), generator=g)
    temp = 0.6
    lp = L.logprobs_from_logits(logits, tokens, temp)
    ent = L.entropy_from_logits(logits, temp)
    for b in range(2):
        for t in range(3):
            z = [float(v) / temp for v in logits[b, t]]
            lse = math.log(sum(math.exp(v) for v in z))
            logp = [v - lse for v in z]
            assert lp[b, t].item() == pytest.approx(logp[int(tokens[b, t])], abs=1e-5)
            assert ent[b, t].item() == pytest.approx(-sum(math.exp(v) * v for v in logp), abs=1e-5)
    # uniform logits: log p = -log V at any temperature, entropy log V
    u = torch.zeros(1, 1, 4)
    assert L.logprobs_from_logits(u, torch.tensor([[2]]), 0.3).item() == pytest.approx(-math.log(4))
    assert L.entropy_from_logits(u).item() == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="temperature"):
        L.logprobs_from_logits(u, torch.tensor([[0]]), 0.0)


def test_kl_k3_by_hand_and_clamped() -> None:
    # π_ref/π_θ = 2: 2 - ln 2 - 1; equal: 0; huge ratio clamps to 10
    lp = torch.tensor([[math.log(0.25), math.log(0.5), -30.0]])
    ref = torch.tensor([[math.log(0.5), math.log(0.5), 0.0]])
    kl = L.kl_k3(lp, ref, clamp=10.0)
    torch.testing.assert_close(kl, torch.tensor([[1 - math.log(2), 0.0, 10.0]]))
    assert bool((L.kl_k3(torch.randn(50), torch.randn(50)) >= 0).all())


def _policy_loop(lp, old, adv, mask, eps, ref, beta, reduction):
    rows, tot_pg, n, clipped = lp.shape[0], 0.0, 0, 0
    kl_rows = [0.0] * rows
    for b in range(rows):
        for t in range(lp.shape[1]):
            if not mask[b, t]:
                continue
            r = math.exp(float(lp[b, t]) - float(old[b, t]))
            a = float(adv[b, t])
            l1, l2 = -a * r, -a * min(max(r, 1 - eps), 1 + eps)
            lr = float(ref[b, t]) - float(lp[b, t])
            kl_rows[b] += min(max(math.exp(lr) - lr - 1, 0.0), 10.0)
            tot_pg += max(l1, l2)
            clipped += l2 > l1
            n += 1
    kl = sum(kl_rows) / rows if reduction == "sequence_sum" else sum(kl_rows) / n
    return tot_pg / n + beta * kl, clipped / n


def test_policy_loss_by_hand() -> None:
    # r = 1.5, A = 1: min(1.5, 1.2) -> loss -1.2, clipped; r = 0.5, A = 1: loss -0.5 (not clipped)
    lp = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    loss, stats = L.policy_loss(lp, old, torch.ones(1, 2), torch.ones(1, 2), clip_eps=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio/mean"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("reduction", ["sequence_sum", "token_mean"])
def test_policy_loss_matches_loop(reduction: str) -> None:
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(4, 6, generator=g) * 3
    old = lp + torch.randn(4, 6, generator=g) * 0.3
    ref = lp + torch.randn(4, 6, generator=g) * 0.5
    adv = torch.randn(4, 6, generator=g)
    mask = (torch.rand(4, 6, generator=g) > 0.3).long()
    loss, stats = L.policy_loss(
        lp, old, adv, mask, 0.2, ref_logprobs=ref, kl_coef=0.1, kl_reduction=reduction
    )
    exp_loss, exp_clip = _policy_loop(lp, old, adv, mask, 0.2, ref, 0.1, reduction)
    assert loss.item() == pytest.approx(exp_loss, abs=1e-5)
    assert stats["clipfrac"].item() == pytest.approx(exp_clip)


def test_kl_penalty_reductions_by_hand() -> None:
    # rows of 3 and 1 response tokens; the masked-out 9s never count
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # sequence_sum: mean over responses of Σ_t k3 = (0.6 + 0.4) / 2; token_mean: 1.0 / 4
    assert L.kl_penalty(kl, mask, "sequence_sum").item() == pytest.approx(0.5)
    assert L.kl_penalty(kl, mask, "token_mean").item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="known: sequence_sum, token_mean"):
        L.kl_penalty(kl, mask, "nope")  # type: ignore[arg-type]


def test_kl_term_of_policy_loss_by_hand_both_reductions() -> None:
    # π_θ = 0.25, π_ref = 0.5 on every token, A = 0, r = 1: only β·KL remains.
    # k3 = 2 − ln 2 − 1 per token; ∂k3/∂log π_θ = 1 − π_ref/π_θ = −1.
    # Responses of 3 and 1 tokens (B = 2, 4 tokens), β = 0.1:
    #   sequence_sum (the authors): β·(3·k3 + k3)/2 = 2β·k3, gradient β·(−1)/2 per token
    #   token_mean:                 β·(4·k3)/4 = β·k3,      gradient β·(−1)/4 per token
    k3, beta = 1 - math.log(2), 0.1
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    for reduction, want, grad in (
        ("sequence_sum", 2 * beta * k3, -beta / 2),
        ("token_mean", beta * k3, -beta / 4),
    ):
        lp = torch.full((2, 3), math.log(0.25), requires_grad=True)
        ref = torch.full((2, 3), math.log(0.5))
        loss, stats = L.policy_loss(
            lp,
            lp.detach(),
            torch.zeros(2, 3),
            mask,
            ref_logprobs=ref,
            kl_coef=beta,
            kl_reduction=reduction,
        )
        assert loss.item() == pytest.approx(want)
        assert stats["kl/ref"].item() == pytest.approx(k3)  # per token, whatever the reduction
        assert stats["kl/ref_seq"].item() == pytest.approx(2 * k3)  # (3 + 1)·k3 / 2 responses
        loss.backward()
        assert lp.grad is not None
        torch.testing.assert_close(lp.grad, grad * mask)


def test_policy_loss_gradient_zero_when_clipped() -> None:
    lp = torch.log(torch.tensor([[1.5]])).requires_grad_()
    loss, _ = L.policy_loss(lp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1))
    loss.backward()
    assert lp.grad is not None and lp.grad.item() == 0.0


def test_value_loss_by_hand_and_loop() -> None:
    # V=0.9, V_old=0.5, G=1: unclipped (0.1)^2, clipped V=0.7 -> (0.3)^2; ½·max = 0.045
    # V=0.2, V_old=0.3, G=0: unclipped 0.04, clipped stays 0.2 -> 0.02
    v, old, ret = torch.tensor([[0.9, 0.2]]), torch.tensor([[0.5, 0.3]]), torch.tensor([[1.0, 0.0]])
    loss, stats = L.value_loss(v, old, ret, torch.ones(1, 2), clip_eps=0.2)
    assert loss.item() == pytest.approx((0.045 + 0.02) / 2)
    assert stats["value/clipfrac"].item() == pytest.approx(0.5)
    g = torch.Generator().manual_seed(4)
    v, old, ret = torch.rand(3, 5, generator=g), torch.rand(3, 5, generator=g), torch.rand(3, 5)
    mask = torch.ones(3, 5)
    loss, _ = L.value_loss(v, old, ret, mask, clip_eps=0.2)
    ref = statistics.mean(
        0.5 * max((a - c) ** 2, (b + min(max(a - b, -0.2), 0.2) - c) ** 2)
        for a, b, c in zip(
            v.flatten().tolist(), old.flatten().tolist(), ret.flatten().tolist(), strict=True
        )
    )
    assert loss.item() == pytest.approx(ref, abs=1e-6)


def test_skip_update_threshold() -> None:
    assert L.should_skip_update(torch.tensor(10.5), 10.0)
    assert not L.should_skip_update(1.0, 10.0)


def test_whiten_matches_statistics() -> None:
    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 4.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    out = L.whiten(x, mask, eps=0.0)
    vals = [1.0, 2.0, 3.0, 4.0]
    mu, sd = statistics.mean(vals), statistics.stdev(vals)
    torch.testing.assert_close(
        out,
        torch.tensor([[(1 - mu) / sd, (2 - mu) / sd, 0.0], [(3 - mu) / sd, (4 - mu) / sd, 0.0]]),
    )
    with pytest.raises(ValueError, match="at least 2"):
        L.whiten(x, torch.zeros_like(mask))


def _whiten_worker(rank: int, port: int, x: torch.Tensor, mask: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        half = x.shape[0] // 2
        sl = slice(rank * half, (rank + 1) * half)
        out[rank] = L.whiten(x[sl], mask[sl], distributed=True).clone()
    finally:
        dist.destroy_process_group()


def test_whiten_two_ranks_equals_one_process() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, generator=g) * 3 + 1
    mask = (torch.rand(6, 4, generator=g) > 0.25).long()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_whiten_worker, args=(free_port(), x, mask, out), nprocs=2, join=True)
        got = torch.cat([out[0], out[1]])
    torch.testing.assert_close(got, L.whiten(x, mask))


def test_dpo_positive_by_hand() -> None:
    # Δ_w = -1 - (-2) = 1, Δ_l = -3 - (-2) = -1; penalty max(0, -2 - -1) = 0
    one = torch.tensor
    loss, stats = L.dpo_positive_loss(one([-1.0]), one([-3.0]), one([-2.0]), one([-2.0]), 0.5, 50)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 2))))
    # chosen fell below reference by 0.5: penalty 0.5 -> logits 0.5·(2 − 50·0.5) = −11.5
    # (λ inside β, as Pal et al. and the authors)
    loss, stats = L.dpo_positive_loss(one([-2.5]), one([-5.5]), one([-2.0]), one([-3.0]), 0.5, 50)
    assert stats["dpo/penalty"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(11.5))))
