"""A task whose reward is learnable by construction, for the "RL learns" tests.

Every problem asks to write a three-digit number with distinct digits three times; then the
answer::

    Question: Write 472 three times.
    Answer:
    472
    472
    472
    #### 472

That is three reasoning steps (``472\n``, ``472\n``, ``472\n#### 472``). The SFT data always
gets the first line right and mixes a right second line (share ``p_correct``) with a fixed
wrong one that writes the digits reversed (``274``), which the third line and the answer then
copy. So the SFT policy has learned both modes of step 1 and picks the right one with
probability about ``p_correct`` (less at temperature < 1); steps 0 and 2 are (almost)
deterministic. The error sits in one known step: VinePPO's advantage must be negative on step
1 of a wrong response and about 0 on steps 0 and 2, where a trajectory-level baseline blames
every step alike. To raise the reward, RL only has to shift probability between two
behaviours the model already has: any working policy-gradient method must learn it within a
few iterations, so a method that does not has a bug.

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


ERROR_STEP = 1
"""The step whose two modes (right / reversed) decide the reward."""


def question(n: int) -> str:
    return f"Write {n} three times."


def solution(n: int, *, correct: bool = True) -> str:
    shown = n if correct else int(str(n)[::-1])
    return f"{n}\n{shown}\n{shown}\n#### {shown}"


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
        {"question": question(n), "answer": solution(n, correct=rng.random() < p_correct)}
        for n in sft
    ]
    gold = [{"question": question(n), "answer": solution(n)} for n in nums]
    rng.shuffle(gold)
    sft_dir, rl_dir = root / "sft-data", root / "rl-data"
    _write(sft_dir / "gsm8k" / "train.jsonl", sft_rows_)
    _write(sft_dir / "gsm8k" / "test.jsonl", gold[:50])
    _write(rl_dir / "gsm8k" / "train.jsonl", gold)
    _write(rl_dir / "gsm8k" / "test.jsonl", gold[:50])
    return sft_dir, rl_dir
