"""Episodes from completions and verdicts: a grader that failed on every item stops the run."""

from __future__ import annotations

import pytest

from services.trainer.data.episodes import GradingFailed, build_episodes, error_rate
from shared.example import Example
from shared.schemas import Completion, Verdict


class _Tok:
    """The two tokenizer calls build_episodes makes, on a character-level vocabulary."""

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def _inputs(
    statuses: list[str],
) -> tuple[list[Example], list[str], list[list[Completion]], list[Verdict]]:
    ex = Example("e0", "1+1?", "1+1 = 2\n#### 2", "2", "gsm8k")
    text = "1+1 = 2\n#### 2"
    comps = [
        [
            Completion(
                text=text,
                token_ids=[ord(c) for c in text],
                logprobs=[0.0] * len(text),
                finish_reason="stop",
            )
            for _ in statuses
        ]
    ]
    verdicts = [
        Verdict(status=s, reward=1.0 if s == "correct" else 0.0, detail="pool died")
        for s in statuses
    ]
    return [ex], ["Q: 1+1?\n"], comps, verdicts


def test_all_error_verdicts_raise_instead_of_training_on_zeros() -> None:
    examples, prompts, comps, verdicts = _inputs(["error", "error"])
    with pytest.raises(GradingFailed, match=r"all 2 responses.*pool died"):
        build_episodes(examples, prompts, comps, verdicts, _Tok(), "gsm8k")


def test_some_errors_are_counted_not_fatal() -> None:
    examples, prompts, comps, verdicts = _inputs(["error", "correct", "incorrect", "correct"])
    episodes = build_episodes(examples, prompts, comps, verdicts, _Tok(), "gsm8k")
    assert [e.reward for e in episodes] == [0.0, 1.0, 0.0, 1.0]
    assert error_rate(verdicts) == 0.25
    assert error_rate([]) == 0.0
