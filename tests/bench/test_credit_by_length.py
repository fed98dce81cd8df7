"""The length trend of bench/credit_by_length.py against a hand computation."""

from __future__ import annotations

import math

import pytest

from bench.credit_by_length import length_slope


def band(gap: float, se: float) -> dict[str, object]:
    return {"gap": {"baseline": "ppo", "mean": gap, "se": se}}


def test_slope_and_its_standard_error_by_hand() -> None:
    # mean lengths 3, 5, 7: weights (x − 5) / 8 = −0.25, 0, 0.25
    bands = {"2-4": band(0.0, 0.01), "4-6": band(0.02, 0.01), "6-8": band(0.04, 0.01)}
    slope, se = length_slope(bands)
    assert slope == pytest.approx(0.01)
    assert se == pytest.approx(math.sqrt(2 * (0.25 * 0.01) ** 2))


def test_a_flat_gap_has_no_slope_and_two_bands_work() -> None:
    slope, se = length_slope({"2-4": band(0.01, 0.004), "4-6": band(0.01, 0.006)})
    assert slope == pytest.approx(0.0)
    assert se == pytest.approx(math.hypot(0.004, 0.006) / 2)  # weights ∓1/2 per step
