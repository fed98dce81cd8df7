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
