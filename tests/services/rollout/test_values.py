"""MC value estimation: the terminal rule, dedup, the budget rule, random streams, and values
graded by the real reward service."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.reward.client import RewardClient
from services.rollout.engine.torch_engine import TorchEngine
from services.rollout.values import (
    continuation_budget,
    estimate_values,
    has_closed_boxed,
    is_terminal,
    standard_error,
)
from shared.schemas import SamplingParams, ValueItem, ValueRequest
from tests.services.rollout.conftest import PROMPT, SOLUTION

TERMINAL_CASES = [
    ("Step 1.\n#### 7\n", "gsm8k", True),  # complete final-answer line
    ("Step 1.\n#### 7", "gsm8k", False),  # answer line not finished: the model may go on (72)
    ("Step 1.\n####\n", "gsm8k", False),  # no answer on the line
    ("x #### 7\n", "gsm8k", False),  # not at the start of a line
    ("so \\boxed{\\frac{1}{2}}.", "math", True),  # closed box, nested braces
    ("so \\boxed{\\frac{1}{2}", "math", False),  # box still open
    ("Step 1.\n#### 7\n", "math", False),  # gsm8k line means nothing for math
    ("Step 1.</s>", "gsm8k", True),  # ended by EOS
    ("", "gsm8k", False),  # the prompt state s_0
]


@pytest.mark.parametrize(("partial", "dataset", "expected"), TERMINAL_CASES)
def test_terminal_rule(partial: str, dataset: str, expected: bool) -> None:
    assert is_terminal(partial, dataset, eos_text="</s>") is expected


def test_has_closed_boxed_skips_an_open_first_box() -> None:
    assert has_closed_boxed("\\boxed{ and later \\boxed{3}") is True
    assert has_closed_boxed("\\boxed{{}") is False


@pytest.mark.server
async def test_estimate_values_dedup_terminal_and_token_ids(
    trained_model_dir: Path, reward_url: str
) -> None:
    engine = TorchEngine(trained_model_dir)
    sp = SamplingParams(temperature=0.5, max_tokens=48, seed=0)
    step1 = "Tom starts with 3 apples.\n"
    items = [
        ValueItem(prompt=PROMPT, partial_response=step1, gold="7"),
        ValueItem(prompt=PROMPT, partial_response=step1, gold="7"),  # duplicate state
        ValueItem(prompt=PROMPT, partial_response=SOLUTION, gold="7"),  # terminal, correct
        ValueItem(prompt=PROMPT, partial_response=SOLUTION, gold="8"),  # terminal, wrong
        ValueItem(prompt=PROMPT, partial_response=step1, gold="5"),  # never written
    ]
    ids = engine.tokenizer(PROMPT + step1)["input_ids"]
    async with RewardClient(reward_url) as grader:
        values = await estimate_values(engine, grader, items, 4, sp)
        by_ids = await estimate_values(engine, grader, items[:1], 4, sp, token_ids=[ids])
    assert [v.value for v in values] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert values[0] == values[1]
    assert values[2].terminal and values[2].returns == [1.0] and values[2].num_tokens == 0
    assert values[3].verdicts == ["incorrect"]
    assert len(values[4].returns) == 4 and set(values[4].verdicts) == {"incorrect"}
    # sampled states (step1, gold 7) and (step1, gold 5) share one prefix: one prefill per call
    assert engine.stats().requests == 2
    assert engine.stats().prompt_tokens == 2 * len(ids)
    assert (
        engine.stats().sampled_tokens
        == values[0].num_tokens + values[4].num_tokens + by_ids[0].num_tokens
    )
    assert by_ids[0].value == 1.0 and by_ids[0].num_tokens > 0


def test_continuation_budget_is_what_the_response_and_the_context_leave() -> None:
    # B = 40 response tokens, prompt P = 10, prompt + partial L = 25, context C = 256
    assert continuation_budget(40, 25, 10, 256) == 40 - 15
    assert continuation_budget(40, 250, 245, 256) == 256 - 250  # the context binds
    assert continuation_budget(40, 50, 10, 256) == 0  # the partial used the whole budget
    assert continuation_budget(40, 300, 10, 256) < 0  # prefix longer than the context
    assert continuation_budget(40, 9, 10, 256) == 40  # boundary merge: partial counts 0


@pytest.mark.server
async def test_a_continuation_cut_at_its_budget_returns_zero(
    trained_model_dir: Path, reward_url: str
) -> None:
    """Greedy from the prompt writes SOLUTION then EOS. With a response budget of exactly
    SOLUTION's tokens the continuation holds the whole correct answer but is cut before
    EOS: a truncated episode, so it returns 0, ungraded. One more token and it is 1."""
    engine = TorchEngine(trained_model_dir)
    sol = len(engine.tokenize(PROMPT + SOLUTION)) - len(engine.tokenize(PROMPT))
    greedy = SamplingParams(temperature=0.0, max_tokens=sol + 1)
    ((free,),) = await engine.generate([PROMPT], 1, greedy.model_copy(update={"max_tokens": 99}))
    assert (free.text, free.finish_reason, len(free.token_ids)) == (SOLUTION, "stop", sol + 1)
    item = ValueItem(prompt=PROMPT, gold="7")
    async with RewardClient(reward_url) as grader:
        (cut,) = await estimate_values(
            engine, grader, [item], 2, greedy.model_copy(update={"max_tokens": sol})
        )
        (room,) = await estimate_values(engine, grader, [item], 2, greedy)
    assert cut.value == 0.0 and cut.returns == [0.0, 0.0] and cut.verdicts == ["truncated"] * 2
    assert cut.num_tokens == 2 * sol and not cut.out_of_budget and not cut.terminal
    assert room.value == 1.0 and room.verdicts == ["correct"] * 2
    assert room.num_tokens == 2 * (sol + 1)


def _prompt_of(engine: TorchEngine, tokens: range) -> str:
    """The shortest 'Tom Tom ...' prompt whose tokenisation has a length in ``tokens``."""
    for r in range(1, 1000):
        if len(engine.tokenize("Tom " * r)) in tokens:
            return "Tom " * r
    raise AssertionError(f"no prompt of {tokens} tokens")


@pytest.mark.server
async def test_continuations_get_what_the_response_budget_and_context_leave(
    sevens_model_dir: Path, reward_url: str
) -> None:
    """The model writes '7' forever, so every continuation runs exactly to its budget:
    num_tokens = k × budget shows each state's budget. Prefixes too long for the context
    and partials that used the whole response budget are out of budget (value 0, nothing
    sampled); none of them fails the call."""
    engine = TorchEngine(sevens_model_dir)
    context, budget, k = engine.max_context(), 40, 3
    n = lambda text: len(engine.tokenize(text))  # noqa: E731
    prompt = "Question: Tom has 3 apples and buys 4 more. How many apples?\nAnswer:\n"
    partials = ["", "Tom starts with 3 apples.\n", "Tom starts with 3 apples.\nHe buys 4 more.\n"]
    near_full = _prompt_of(engine, range(context - 12, context - 4))  # 5..12 tokens of room
    too_long = _prompt_of(engine, range(context, context + 8))
    spent = "Tom has 3 apples. " * 12  # more than `budget` tokens of partial response
    assert n(prompt + spent) - n(prompt) >= budget
    items = [ValueItem(prompt=prompt, partial_response=p, gold="7") for p in partials]
    items += [
        ValueItem(prompt=near_full, gold="7"),
        ValueItem(prompt=too_long, gold="7"),
        ValueItem(prompt=prompt, partial_response=spent, gold="7"),
    ]
    sp = SamplingParams(temperature=1.0, max_tokens=budget, seed=0)
    async with RewardClient(reward_url) as grader:
        values = await estimate_values(engine, grader, items, k, sp)
    for p, v in zip(partials, values, strict=False):
        left = budget - (n(prompt + p) - n(prompt))
        assert v.num_tokens == k * left, p
        assert v.value == 0.0 and v.verdicts == ["truncated"] * k and not v.out_of_budget
    assert values[3].num_tokens == k * (context - n(near_full)) < k * budget
    for v in values[4:]:
        assert v.out_of_budget and not v.terminal
        assert (v.value, v.returns, v.verdicts, v.num_tokens) == (0.0, [0.0], ["truncated"], 0)
    assert engine.stats().sampled_tokens == sum(v.num_tokens for v in values)


@pytest.mark.server
async def test_value_streams_are_keyed_by_global_position(
    coin_model_dir: Path, reward_url: str
) -> None:
    """'7' or EOS with probability 1/2 whatever the prompt: after '#### ' a continuation
    returns 1 only for '7' then EOS. Two states at local index 0 of two requests draw
    different streams; cutting the batch in two changes no return."""
    engine = TorchEngine(coin_model_dir)
    items = [ValueItem(prompt=f"Question {c}:\n", partial_response="#### ", gold="7") for c in "AB"]
    sp = SamplingParams(temperature=1.0, max_tokens=8, seed=11)
    async with RewardClient(reward_url) as grader:
        whole = await estimate_values(engine, grader, items, 32, sp)
        first = await estimate_values(engine, grader, items[:1], 32, sp)
        second = await estimate_values(engine, grader, items[1:], 32, sp, stream_offset=1)
        unkeyed = await estimate_values(engine, grader, items[1:], 32, sp)
    assert [v.returns for v in whole] == [first[0].returns, second[0].returns]
    assert whole[0].returns != whole[1].returns
    assert unkeyed[0].returns == first[0].returns  # same stream, prompt-blind model
    assert 0.0 < whole[0].value < 1.0 and "correct" in whole[0].verdicts


@pytest.mark.server
async def test_target_standard_error_spends_k_where_the_value_is_uncertain(
    coin_model_dir: Path, reward_url: str
) -> None:
    """A coin-flip state (V = 1/2) and a state no continuation can save (V = 0): with a
    target SE of 0.08 the second stops at 16 draws (4, 8, 16: Agresti-Coull SE 0.108, then
    0.067), the first goes on (at 16 draws its SE is about 0.11); every state stops once its
    SE is met or k is spent, and the first round is the request's own streams."""
    engine = TorchEngine(coin_model_dir)
    items = [
        ValueItem(prompt="Question A:\n", partial_response="#### ", gold="7"),
        ValueItem(prompt="Question B:\n", partial_response="#### 8", gold="7"),
    ]
    sp = SamplingParams(temperature=1.0, max_tokens=8, seed=2)
    async with RewardClient(reward_url) as grader:
        adaptive = await estimate_values(engine, grader, items, 64, sp, target_se=0.08)
        fixed = await estimate_values(engine, grader, items, 4, sp)
    assert len(adaptive[1].returns) == 16 and len(adaptive[0].returns) in (32, 64)
    assert all(standard_error(v.returns) <= 0.08 or len(v.returns) == 64 for v in adaptive)
    assert [v.returns[:4] for v in adaptive] == [v.returns for v in fixed]
    assert 0.2 < adaptive[0].value < 0.8 and adaptive[1].value == 0.0
    assert standard_error([1.0] * 16) == pytest.approx(0.067, abs=1e-3)
    with pytest.raises(ValueError, match="target_se"):
        ValueRequest(items=items, target_se=0.0)
