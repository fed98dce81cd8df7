"""Dataset loaders: GSM8K and MATH jsonl files, and the built-in arithmetic task.

Every loader returns `Example`s with the gold solution and final answer. Train/validation
come from one training file split by the fixed `SPLIT_SEED`, as in the paper
(GSM8K 7,473 → 7,100 train / 373 validation; MATH 12,000 → 11,500 / 500); test is the
test file (GSM8K 1,319; MATH-500). The validation split never depends on a run's seed, so
SFT and every RL run (any seed) select checkpoints on the same problems and never train on
them.

Files are read from ``data_dir`` (argument) or ``$VINEPPO_DATA_DIR`` or the repo's ``data/``:
``gsm8k/{train,test}.jsonl`` (``question``, ``answer`` with ``#### n``) and
``math/{train,test}.jsonl`` (``problem``, ``solution``, optional ``answer``).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.example import Example, gsm8k_answer

DATASETS = ("gsm8k", "math", "arithmetic")
SPLITS = ("train", "validation", "test")
VALIDATION_SIZE = {"gsm8k": 373, "math": 500}
"""Size of the validation split carved out of each training file (the paper's numbers)."""
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SPLIT_SEED = 0
"""Seed of the train/validation split of a training file and of the generated validation
problems: fixed, independent of the run seed."""
ARITHMETIC_SIZES = {"train": 5000, "validation": 500, "test": 1000}
"""Default number of generated problems per split for ``arithmetic`` when ``n`` is None."""

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def data_root(data_dir: Path | None = None) -> Path:
    """The folder holding ``gsm8k/`` and ``math/``: argument, ``$VINEPPO_DATA_DIR`` or repo."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("VINEPPO_DATA_DIR")
    return Path(env) if env else DEFAULT_DATA_DIR


def load_examples(
    name: str,
    split: str,
    *,
    data_dir: Path | None = None,
    seed: int = 0,
    n: int | None = None,
    arithmetic: Mapping[str, Any] | None = None,
) -> list[Example]:
    """Load ``split`` (train | validation | test) of ``name`` (gsm8k | math | arithmetic).

    Train and validation are the `SPLIT_SEED` split of the training file, each in file
    order; ``n`` keeps the first ``n`` examples (so a smaller ``n`` is a prefix of a larger
    one). For ``arithmetic`` the problems are generated (``ArithmeticConfig(**arithmetic)``,
    default config when None; ``n`` or `ARITHMETIC_SIZES` problems): train and test with
    ``seed`` as the generator seed, validation always with `SPLIT_SEED`. ``seed`` changes
    nothing else: the validation split is the same for every run seed.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if name == "arithmetic":
        from shared.tasks.arithmetic import ArithmeticConfig, generate

        count = ARITHMETIC_SIZES[split] if n is None else n
        gen_seed = SPLIT_SEED if split == "validation" else seed
        return generate(ArithmeticConfig(**(arithmetic or {})), split=split, n=count, seed=gen_seed)
    file_split = "test" if split == "test" else "train"
    path = data_root(data_dir) / name / f"{file_split}.jsonl"
    if not path.is_file():
        hint = (
            " MATH's 12,000-problem training file is not shipped; provide it as"
            " <data_dir>/math/train.jsonl (pass data_dir= or set VINEPPO_DATA_DIR)."
            if name == "math"
            else " Pass data_dir= or set VINEPPO_DATA_DIR to the folder holding gsm8k/."
        )
        raise FileNotFoundError(f"{name} {split} needs {path}, which does not exist.{hint}")
    parse = _gsm8k_example if name == "gsm8k" else _math_example
    rows = _read_jsonl(path)
    examples = [parse(row, f"{name}/{file_split}/{i}") for i, row in enumerate(rows)]
    if split != "test":
        examples = _train_validation(examples, VALIDATION_SIZE[name], SPLIT_SEED)[split]
    return examples if n is None else examples[:n]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            rows.append(row)
    return rows


def _train_validation(examples: list[Example], n_val: int, seed: int) -> dict[str, list[Example]]:
    """Seeded split: ``n_val`` examples for validation, the rest for train, both in file order."""
    if len(examples) <= n_val:
        raise ValueError(f"training file has {len(examples)} rows; need more than {n_val}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return {
        "train": [e for i, e in enumerate(examples) if i not in val],
        "validation": [e for i, e in enumerate(examples) if i in val],
    }


def _gsm8k_example(row: dict[str, Any], default_id: str) -> Example:
    try:
        question, raw = str(row["question"]), str(row["answer"])
    except KeyError as e:
        raise ValueError(f"{default_id}: GSM8K row lacks field {e}") from e
    solution = _CALCULATOR.sub("", raw)
    return Example(default_id, question, solution, gsm8k_answer(solution), "gsm8k")


def _math_example(row: dict[str, Any], default_id: str) -> Example:
    try:
        question, solution = str(row["problem"]), str(row["solution"])
    except KeyError as e:
        raise ValueError(f"{default_id}: MATH row lacks field {e}") from e
    answer = row.get("answer")
    answer = str(answer) if answer is not None else last_boxed(solution)
    return Example(str(row.get("unique_id", default_id)), question, solution, answer, "math")


def last_boxed(text: str) -> str:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``, braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return ""
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else ""
