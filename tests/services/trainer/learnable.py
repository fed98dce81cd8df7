"""A task whose reward is learnable by construction, for the "RL learns" tests.

Every problem asks to repeat a three-digit number with distinct digits; a solution writes the
number on one line (the reasoning step), then ``#### number``::

    Question: Repeat 472.
    Answer:
    472
    #### 472

The SFT data mixes the right solution (share ``p_correct``) with a fixed wrong one that writes
the digits reversed (``274`` / ``#### 274``), so the SFT policy has learned both modes and
picks the right one with probability about ``p_correct`` (less at temperature < 1). One wrong
step makes the answer wrong, and all RL has to do to raise the reward is shift probability
between two behaviours the model already has: any working policy-gradient method must
learn it within a few iterations, so a method that does not has a bug.

Files are written in GSM8K's jsonl format (``gsm8k/train.jsonl`` and ``gsm8k/test.jsonl``)
under two data dirs: the SFT dir (mixed solutions) and the RL dir (gold solutions, whose
``#### n`` is what the grader checks). Point ``$VINEPPO_DATA_DIR`` at the RL dir.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path


def numbers() -> list[int]:
    """All 504 three-digit numbers with three distinct non-zero digits."""
    return [int("".join(map(str, p))) for p in itertools.permutations(range(1, 10), 3)]


def solution(n: int, *, correct: bool = True) -> str:
    shown = n if correct else int(str(n)[::-1])
    return f"{shown}\n#### {shown}"


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_data(
    root: Path, *, p_correct: float = 0.35, sft_rows: int = 3000, seed: int = 0
) -> tuple[Path, Path]:
    """Write the SFT and RL data dirs under ``root``; returns (sft_dir, rl_dir)."""
    rng = random.Random(seed)
    nums = numbers()
    sft = [rng.choice(nums) for _ in range(sft_rows)]
    sft_rows_ = [
        {"question": f"Repeat {n}.", "answer": solution(n, correct=rng.random() < p_correct)}
        for n in sft
    ]
    gold = [{"question": f"Repeat {n}.", "answer": solution(n)} for n in nums]
    rng.shuffle(gold)
    sft_dir, rl_dir = root / "sft-data", root / "rl-data"
    _write(sft_dir / "gsm8k" / "train.jsonl", sft_rows_)
    _write(sft_dir / "gsm8k" / "test.jsonl", gold[:50])
    _write(rl_dir / "gsm8k" / "train.jsonl", gold)
    _write(rl_dir / "gsm8k" / "test.jsonl", gold[:50])
    return sft_dir, rl_dir
