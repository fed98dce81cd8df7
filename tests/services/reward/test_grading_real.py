"""The grader on the real test sets: every gold solution is correct against its own answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.reward.grading import grade
from services.reward.sandbox import GraderPool
from shared.schemas import GradeItem


def load(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gsm8k_number(solution: str) -> int:
    return int(solution.split("####")[-1].strip().replace(",", ""))


def test_math500_solutions_match_their_own_answer(data_dir: Path) -> None:
    rows = load(data_dir / "math" / "test.jsonl")
    assert len(rows) == 500
    verdicts = [grade(r["solution"], r["answer"], "math") for r in rows]
    wrong = [(r["answer"], v) for r, v in zip(rows, verdicts, strict=True) if v.status != "correct"]
    assert not wrong, wrong[:5]


def _same_answer(a: str, b: str) -> bool:
    """Answers that are the same up to spacing or an ``x =`` prefix (graded as equal)."""
    strip = [re.sub(r"^[a-z]\s*=", "", "".join(s.split())) for s in (a, b)]
    return strip[0] == strip[1]


@pytest.mark.slow
@pytest.mark.parametrize("shift", [1, 250])
async def test_math500_solutions_do_not_match_other_answers(data_dir: Path, shift: int) -> None:
    rows = load(data_dir / "math" / "test.jsonl")
    pairs = [(r, rows[(i + shift) % len(rows)]["answer"]) for i, r in enumerate(rows)]
    pairs = [(r, other) for r, other in pairs if not _same_answer(r["answer"], other)]
    assert len(pairs) > 400
    items = [GradeItem(response=r["solution"], gold=other, dataset="math") for r, other in pairs]
    # A generous limit: this test is about verdicts; the limit itself is tested in test_sandbox.
    async with GraderPool(workers=2, timeout_s=10.0) as pool:
        verdicts = await pool.grade_batch(items)
    wrong = [
        (r["answer"], o, v.status)
        for (r, o), v in zip(pairs, verdicts, strict=True)
        if v.status != "incorrect"
    ]
    assert not wrong, wrong


def test_gsm8k_solutions_match_own_answer_and_not_answer_plus_one(data_dir: Path) -> None:
    rows = load(data_dir / "gsm8k" / "test.jsonl")
    assert len(rows) == 1319
    for r in rows:
        n = gsm8k_number(r["answer"])
        assert grade(r["answer"], str(n), "gsm8k").status == "correct", r["answer"]
        assert grade(r["answer"], r["answer"], "gsm8k").status == "correct"  # gold = solution
        assert grade(r["answer"], str(n + 1), "gsm8k").status == "incorrect", r["answer"]
