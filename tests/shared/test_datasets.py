"""Dataset loaders: the paper's split sizes, determinism, gold cleaning, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.datasets import last_boxed, load_examples
from shared.example import Example


def test_gsm8k_split_sizes_and_one_fixed_partition(data_dir: Path) -> None:
    train = load_examples("gsm8k", "train", data_dir=data_dir)
    val = load_examples("gsm8k", "validation", data_dir=data_dir)
    test = load_examples("gsm8k", "test", data_dir=data_dir)
    assert (len(train), len(val), len(test)) == (7100, 373, 1319)
    ids = {e.id for e in train} | {e.id for e in val}
    assert len(ids) == 7473 and not {e.id for e in train} & {e.id for e in val}
    assert load_examples("gsm8k", "validation", data_dir=data_dir) == val
    # the run seed does not move the split: every run validates on the same 373 problems and
    # none of them is ever a training problem of another seed's run
    for seed in (1, 7):
        assert load_examples("gsm8k", "validation", data_dir=data_dir, seed=seed) == val
        assert load_examples("gsm8k", "train", data_dir=data_dir, seed=seed) == train
    assert load_examples("gsm8k", "train", data_dir=data_dir, n=5) == train[:5]


def test_arithmetic_validation_is_independent_of_the_seed() -> None:
    val = load_examples("arithmetic", "validation", n=20)
    for seed in (1, 3):
        assert load_examples("arithmetic", "validation", n=20, seed=seed) == val
    assert load_examples("arithmetic", "validation", n=8, seed=5) == val[:8]  # n: a prefix
    # train and test problems are still drawn with the seed (their splits never overlap)
    assert load_examples("arithmetic", "train", n=20, seed=1) != load_examples(
        "arithmetic", "train", n=20, seed=2
    )


def test_gsm8k_gold_is_cleaned(data_dir: Path) -> None:
    test = load_examples("gsm8k", "test", data_dir=data_dir)
    assert all("<<" not in e.solution and e.dataset == "gsm8k" for e in test)
    assert all(e.answer and "," not in e.answer for e in test)
    josh = test[2]  # "... 200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000"
    assert josh.solution.endswith("200,000-130,000=$70,000\n#### 70000")
    assert josh.answer == "70000"
    assert sum(float(e.answer).is_integer() for e in test) == 1319


def test_math500_test_and_missing_math_train_says_which_file(data_dir: Path) -> None:
    test = load_examples("math", "test", data_dir=data_dir)
    assert len(test) == 500 and all(e.dataset == "math" and e.answer for e in test)
    assert test[0].id == "test/precalculus/807.json"
    with pytest.raises(FileNotFoundError, match=r"math/train\.jsonl"):
        load_examples("math", "train", data_dir=data_dir)


def test_math_train_file_from_data_dir_env(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "math").mkdir()
    rows = [{"problem": f"p{i}", "solution": f"So $\\boxed{{{i}}}$."} for i in range(600)]
    (tmp_path / "math" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setenv("VINEPPO_DATA_DIR", str(tmp_path))
    train, val = load_examples("math", "train"), load_examples("math", "validation")
    assert (len(train), len(val)) == (100, 500)
    assert all(e.answer == e.question[1:] for e in train + val)  # answer from \boxed{}


def test_arithmetic_delegates_to_the_generator() -> None:
    ex = load_examples("arithmetic", "test", n=4, seed=3)
    assert len(ex) == 4 and all(isinstance(e, Example) and e.dataset == "gsm8k" for e in ex)
    assert ex == load_examples("arithmetic", "test", n=4, seed=3)


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known: gsm8k, math, arithmetic"):
        load_examples("svamp", "test")
    with pytest.raises(ValueError, match="known: train, validation, test"):
        load_examples("gsm8k", "dev")
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\nnope\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:2: not valid JSON"):
        load_examples("gsm8k", "test", data_dir=tmp_path)


def test_last_boxed() -> None:
    assert last_boxed("a $\\boxed{1}$ then $\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert last_boxed("no box") == "" and last_boxed("\\boxed{open") == ""
