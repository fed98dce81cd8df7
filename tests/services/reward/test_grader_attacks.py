"""The grader under structural attack: answers nested deep are unwrapped (a correct one stays
correct), the caps skip what would stall the LaTeX parser or sympy, and 20 concurrent
attacks through the real sandboxed pool are each answered within the time limit + 1 s."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.reward.grading import grade
from services.reward.limits import over_limits
from services.reward.sandbox import GraderPool
from services.reward.textnorm import unwrap_groups
from shared.schemas import GradeItem
from tests.fuzz_attacks import NORMAL, SINGLE, Attack, nested

pytestmark = pytest.mark.server


@pytest.mark.parametrize(
    ("answer", "unwrapped"),
    [
        ("{" * 30 + "x^2+1" + "}" * 30, "x^2+1"),  # a correct answer wrapped deep
        ("(" * 30 + "x" + ")" * 30, "x"),
        ("{({({(x)})})}", "x"),  # bare braces around a parenthesis
        ("\\frac{(a)}{b}", "\\frac{(a)}{b}"),  # a command's argument keeps its braces
        ("\\frac{{(a)}}{b}", "\\frac{(a)}{b}"),  # ... and loses the redundant inner pair
        ("x^{{2}}", "x^{2}"),
        ("((1,2))", "(1,2)"),  # a tuple stays a tuple
        ("(1,2]", "(1,2]"),  # an interval is untouched
        ("\\{1,2\\}", "\\{1,2\\}"),  # escaped braces are a set, not a group
        ("(x+1)(x-1)", "(x+1)(x-1)"),  # two groups: nothing is redundant
        ("2{(x)}", "2{(x)}"),  # after a digit: kept (not surely a bare group)
        ("{", "{"),  # unbalanced: untouched
    ],
)
def test_redundant_groups_are_unwrapped(answer: str, unwrapped: str) -> None:
    assert unwrap_groups(answer) == unwrapped


@pytest.mark.parametrize(
    "answer",
    ["(10^{10})!", "{10^{10}}!", "(3!)!", "5!!", "10^{10}!", "(x-x+10^{10})!", "(2\\cdot 3000)!",
     "6000!", "|1+|1+|1+|1+x||||", "\\int_0^{99}x^{99}dx", "\\sum_{k=1}^{99}k"],
)  # fmt: skip
def test_what_could_stall_sympy_skips_symbolic_work(answer: str) -> None:
    """Factorials of computed numbers (``(10^{10})!`` passed the old cap), more than six
    absolute-value bars, calculus operators."""
    assert over_limits(answer) is not None


@pytest.mark.parametrize("answer", ["5!", "n!", "(n+1)!", "\\frac{1}{2004!}", "|x-1|+|x+1|"])
def test_ordinary_answers_stay_within_the_caps(answer: str) -> None:
    assert over_limits(answer) is None


def test_scientific_notation_is_a_number_never_a_suffix() -> None:
    """``#### 7e3`` against ``7`` was graded correct (the exponent was dropped)."""
    assert grade("#### 7e3", "7", "gsm8k").status == "incorrect"
    assert grade("#### 7e3", "7000", "gsm8k").status == "correct"
    assert grade("#### 1e20", "1e21", "gsm8k").status == "incorrect"


async def _grade_concurrently(
    pool: GraderPool, attacks: list[Attack], clients: int
) -> list[tuple[float, str, str, str | None]]:
    """Each attack as its own request, ``clients`` at a time: (latency, name, status, want)."""
    slots = asyncio.Semaphore(clients)
    out: list[tuple[float, str, str, str | None]] = []

    async def one(name: str, response: str, gold: str, dataset: str, want: str | None) -> None:
        async with slots:
            t0 = time.perf_counter()
            item = GradeItem(response=response, gold=gold, dataset=dataset)  # type: ignore[arg-type]
            (verdict,) = await pool.grade_batch([item])
            out.append((time.perf_counter() - t0, name, verdict.status, want))

    await asyncio.gather(*(one(*a) for a in attacks))
    return out


async def test_correct_answers_wrapped_deep_stay_correct_in_the_sandbox() -> None:
    """``x^2+1`` wrapped 15 deep ran to the 2 s limit (graded ``timeout``, reward 0)."""
    attacks = [a for d in (15, 30) for a in nested(d) if a[4] == "correct"]
    async with GraderPool(workers=1, timeout_s=2.0) as pool:
        got = await _grade_concurrently(pool, attacks, clients=1)
    assert [(name, status) for _, name, status, _ in got] == [(a[0], "correct") for a in attacks]


async def test_twenty_concurrent_attacks_are_each_answered_within_the_limit() -> None:
    """The attacks the issue measured (nesting 10-31 deep, factorials, towers, long digits,
    TeX macros) and normal items, 20 requests at a time into 2 sandboxed workers: every
    answer within ``timeout_s`` + 1 s, no worker killed, every expected verdict."""
    attacks = [a for d in (10, 15, 20, 25, 30, 31) for a in nested(d)] + SINGLE + NORMAL * 10
    async with GraderPool(workers=2, timeout_s=2.0) as pool:
        got = await _grade_concurrently(pool, attacks, clients=20)
        assert pool.restarts == 0
    slow = [(round(t, 2), name) for t, name, _, _ in got if t > 3.0]
    assert slow == []
    wrong = [(name, status, want) for _, name, status, want in got if want and status != want]
    assert wrong == []


def test_a_symbolic_check_stops_at_its_cpu_budget() -> None:
    """An input no cap foresaw costs at most ``symbolic_cpu_s`` of CPU (the sandbox sets
    0.5 s): here a tiny budget stops a first parse of a new shape, and the item is answered
    as over a cap (incorrect, with the reason) instead of running on."""
    from services.reward.limits import Limits

    shape = "\\boxed{" + "([{" + "(1+x)" * 7 + "}])" + "}"  # a shape no test parsed before
    tight = Limits(symbolic_cpu_s=0.001)
    verdict = grade(shape, "y+2", "math", limits=tight)
    assert verdict.status == "incorrect" and "CPU budget" in (verdict.detail or "")
    ok = grade("\\boxed{\\frac{x^2-1}{x-1}}", "x+1", "math", limits=Limits(symbolic_cpu_s=5.0))
    assert ok.status == "correct" and ok.detail is None
