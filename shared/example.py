"""One problem of any dataset (`Example`) and the GSM8K answer rule: what the loaders
(`shared.datasets`) and the built-in task (`shared.tasks.arithmetic`) both produce. It imports
nothing of the project, so both can depend on it without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Example:
    """One problem with its gold solution (the SFT target) and final answer (for grading)."""

    id: str
    question: str
    solution: str
    answer: str
    dataset: Literal["gsm8k", "math"]


def gsm8k_answer(solution: str) -> str:
    """The text after the last ``####`` with thousands separators removed ('' if none)."""
    _, sep, tail = solution.rpartition("####")
    return tail.strip().replace(",", "") if sep else ""
