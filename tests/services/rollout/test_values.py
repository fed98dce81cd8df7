"""MC value estimation: the terminal rule, dedup, and values graded by the real reward service."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.reward.client import RewardClient
from services.rollout.engine.torch_engine import TorchEngine
from services.rollout.values import estimate_values, has_closed_boxed, is_terminal
from shared.schemas import SamplingParams, ValueItem
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
