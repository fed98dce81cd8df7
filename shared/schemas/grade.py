"""Reward service bodies: ``POST /v1/grade``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.schemas.base import Dataset, Message

VerdictStatus = Literal["correct", "incorrect", "no_answer", "bad_gold", "timeout", "error"]

MAX_TEXT_CHARS = 2_000_000
MAX_GRADE_BATCH = 10_000


class GradeItem(Message):
    """One response to grade against one gold answer."""

    response: str = Field(max_length=MAX_TEXT_CHARS, description="Model output, full text.")
    gold: str = Field(
        max_length=MAX_TEXT_CHARS,
        description="Gold final answer, or a gold solution whose answer is extracted.",
    )
    dataset: Dataset = Field(description="Answer format: 'gsm8k' (#### n) or 'math' (\\boxed{}).")


class GradeRequest(Message):
    items: list[GradeItem] = Field(min_length=1, max_length=MAX_GRADE_BATCH)


class Verdict(Message):
    """The grader's decision on one item. ``reward`` is 1.0 only for ``correct``."""

    status: VerdictStatus
    reward: float = Field(ge=0.0, le=1.0)
    extracted: str | None = Field(default=None, description="Answer found in the response.")
    normalized: str | None = Field(default=None, description="Extracted answer, normalised.")
    gold_normalized: str | None = Field(default=None, description="Gold answer, normalised.")
    detail: str | None = Field(default=None, description="Why, for timeout/error/bad_gold.")


class GradeResponse(Message):
    verdicts: list[Verdict]
