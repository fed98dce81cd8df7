"""bench.adaptive_k's exact enumeration against hand computations."""

from __future__ import annotations

import pytest

from bench.adaptive_k import adaptive, fixed, score


@pytest.mark.parametrize("p", [0.0, 0.1, 0.2, 0.5, 0.9])
def test_outcomes_are_distributions_and_fixed_k_is_the_binomial_mean(p: float) -> None:
    for outcomes in (fixed(p, 9), adaptive(p, 3, 9), adaptive(p, 3, 9, 0.25)):
        assert sum(w for w, _, _ in outcomes) == pytest.approx(1.0)
    sc = score(fixed(p, 9), p)
    assert sc["bias"] == pytest.approx(0.0, abs=1e-12)
    assert sc["rmse"] ** 2 == pytest.approx(p * (1 - p) / 9) and sc["cost"] == pytest.approx(9)


def test_stop_if_agree_by_hand() -> None:
    # p = 0.2, k_min = 2, K = 9: stop at 1 (p²) or 0; mixed (2p(1 − p)) keeps its success
    # and draws 7 more: E = p² + 2p(1 − p)(1 + 7p)/9; cost 2 + 2p(1 − p)·7
    p = 0.2
    sc = score(adaptive(p, 2, 9), p)
    assert sc["bias"] == pytest.approx(p**2 + 2 * p * (1 - p) * (1 + 7 * p) / 9 - p)
    assert sc["bias"] == pytest.approx(-0.0747, abs=1e-4)
    assert sc["cost"] == pytest.approx(2 + 2 * p * (1 - p) * 7)


@pytest.mark.parametrize("p", [0.02, 0.2, 0.35, 0.5])
def test_roulette_is_unbiased_and_pays_in_error(p: float) -> None:
    roulette = score(adaptive(p, 3, 9, 0.25), p)
    assert roulette["bias"] == pytest.approx(0.0, abs=1e-12)
    assert roulette["mae"] > score(fixed(p, 9), p)["mae"]


def test_weighted_by_states_averages_each_rule_over_the_truths() -> None:
    from bench.adaptive_k import weighted

    # states at 0 and 1: every draw agrees, so "stop if 3 agree" spends 3 and is exact there;
    # the state at 0.5 scores as the rule does at p = 0.5
    w = weighted([0.0, 1.0, 0.5])
    assert w["states"] == 3 and w["exact"] == pytest.approx(2 / 3)
    half = score(adaptive(0.5, 3, 9), 0.5)
    stop = w["rules"]["stop if 3 agree, else 9"]
    assert stop["cost"] == pytest.approx((3 + 3 + half["cost"]) / 3)
    assert stop["mae"] == pytest.approx(half["mae"] / 3)
    assert stop["vs K=9"] == pytest.approx(stop["cost"] / 9)
    assert w["rules"]["fixed K = 9"]["vs K=9"] == 1.0
