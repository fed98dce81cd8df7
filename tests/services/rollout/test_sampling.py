"""The sampler's pure math against hand computations."""

from __future__ import annotations

import math

import torch

from services.rollout.engine.sampling import inverse_cdf, sample_next, top_p_mask


def test_top_p_mask_keeps_smallest_nucleus() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.97, 0.01, 0.01, 0.01]])
    # row 0: 0.5 (<0.7 before) kept, 0.3 (0.5 before) kept, next has 0.8 before -> dropped
    # row 1: the top token alone reaches 0.7
    expected = torch.tensor([[False, True, True, False], [True, False, False, False]])
    assert torch.equal(top_p_mask(probs, 0.7), expected)


def test_inverse_cdf_by_hand() -> None:
    weights = torch.tensor([[1.0, 0.0, 3.0], [1.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
    # cdf row 0/1 = [1, 1, 4] -> u*4 = 0.4 -> index 0; u*4 = 2.0 -> index 2
    idx = inverse_cdf(weights, torch.tensor([0.1, 0.5, 0.999]))
    assert idx.tolist() == [0, 2, 1]


def test_greedy_reports_log_softmax_at_argmax() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    tokens, logps = sample_next(logits, 0.0, 1.0, torch.tensor([0.3]))
    z = math.log(math.exp(1) + math.exp(3) + math.exp(2))
    assert tokens.tolist() == [1]
    assert abs(logps.item() - (3 - z)) < 1e-6


def test_logprob_is_temperature_scaled_without_top_p_renormalisation() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    t = 0.5
    scaled = [x / t for x in (2.0, 1.0, 0.0)]
    z = math.log(sum(math.exp(s) for s in scaled))
    # top_p=0.5 keeps only token 0; its logprob is still log softmax(logits/T)[0], not 0.0
    tokens, logps = sample_next(logits, t, 0.5, torch.tensor([0.9]))
    assert tokens.tolist() == [0]
    assert abs(logps.item() - (scaled[0] - z)) < 1e-6


def test_sampling_frequencies_follow_softmax() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)]]).repeat(4000, 1)  # p = [0.25, 0.75]
    tokens, _ = sample_next(
        logits, 1.0, 1.0, torch.rand(4000, generator=torch.Generator().manual_seed(0))
    )
    assert abs(tokens.float().mean().item() - 0.75) < 0.03
