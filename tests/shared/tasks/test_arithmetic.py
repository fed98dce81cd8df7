"""The built-in arithmetic task: correct chains, determinism, disjoint splits, the CLI."""

from __future__ import annotations

import random
import re

import pytest
from typer.testing import CliRunner

from shared.steps import split_steps
from shared.tasks.arithmetic import ArithmeticConfig, answer_of, generate, with_slips

LINE = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)$")
OPS = [
    (re.compile(r"(?:finds|gets) (\d+) more"), "+"),
    (re.compile(r"(?:gives away|loses) (\d+)\."), "-"),
    (re.compile(r"(\d+) times"), "*"),
]


def solve_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """Read the story sentence by sentence, independently of the generator."""
    sentences = question.split(". ")
    start = int(re.search(r"has (\d+) ", sentences[0]).group(1))  # type: ignore[union-attr]
    steps = []
    for s in [*sentences[1:-1], sentences[-1].split("? ")[0]]:
        for pat, op in OPS:
            m = pat.search(s + ("." if not s.endswith(".") else ""))
            if m:
                steps.append((op, int(m.group(1))))
                break
    return start, steps


def chain_key(solution: str) -> str:
    lines = solution.split("\n")[:-1]
    first = LINE.match(lines[0])
    assert first
    return first.group(1) + "".join(
        f"{m.group(2)}{m.group(3)}" for m in map(LINE.match, lines) if m
    )


def test_solutions_are_correct_chains_that_match_the_question() -> None:
    cfg = ArithmeticConfig()
    for ex in generate(cfg, "train", 500, seed=0):
        lines = ex.solution.split("\n")
        assert lines[-1] == f"#### {ex.answer}" and answer_of(ex.solution) == ex.answer
        start, steps = solve_question(ex.question)
        assert cfg.min_steps <= len(steps) == len(lines) - 1 <= cfg.max_steps
        value = start
        for (op, k), line in zip(steps, lines[:-1], strict=True):
            m = LINE.match(line)
            assert m and int(m.group(1)) == value and (m.group(2), int(m.group(3))) == (op, k)
            value = {"+": value + k, "-": value - k, "*": value * k}[op]
            assert int(m.group(4)) == value and 0 <= value <= cfg.max_value
        assert str(value) == ex.answer
        # one reasoning step per computation line; '#### n' joins the last
        assert len(split_steps(ex.solution, "arithmetic")) == len(steps)


def test_same_seed_same_problems_and_step_count_is_honoured() -> None:
    cfg = ArithmeticConfig(min_steps=4, max_steps=4)
    a, b = generate(cfg, "test", 50, seed=7), generate(cfg, "test", 50, seed=7)
    assert a == b and generate(cfg, "test", 50, seed=8) != a
    assert all(len(e.solution.split("\n")) == 5 for e in a)
    assert len({e.id for e in a}) == 50


def test_splits_never_share_a_problem_over_thousands() -> None:
    cfg = ArithmeticConfig()
    keys = {
        split: {chain_key(e.solution) for seed in (0, 1) for e in generate(cfg, split, n, seed)}
        for split, n in (("train", 3000), ("validation", 1000), ("test", 1000))
    }
    assert len(keys["train"]) > 5000 and len(keys["test"]) > 1500
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"] and not keys["validation"] & keys["test"]


def test_splits_stay_disjoint_when_the_problem_space_is_tiny() -> None:
    # ~5 * 12 * 12 two-step chains: random splits would collide almost surely
    cfg = ArithmeticConfig(min_steps=2, max_steps=2, max_start=5, max_operand=5, max_value=20)
    train = {chain_key(e.solution) for e in generate(cfg, "train", 300, seed=0)}
    test = {chain_key(e.solution) for s in range(5) for e in generate(cfg, "test", 30, seed=s)}
    assert len(train) == 300 and len(test) > 30 and not train & test
    with pytest.raises(ValueError, match="distinct"):
        generate(cfg, "test", 5000, seed=0)


def test_config_is_checked() -> None:
    for bad in ({"min_steps": 1}, {"max_steps": 9}, {"min_steps": 5, "max_steps": 4}):
        with pytest.raises(ValueError, match="min_steps"):
            ArithmeticConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ops"):
        ArithmeticConfig(ops=("/",))
    with pytest.raises(ValueError, match="split"):
        generate(ArithmeticConfig(), "dev", 1, 0)


def test_cli_tasks_sample_prints_three_problems_reproducibly() -> None:
    from services.cli import app

    args = ["tasks", "sample", "--n", "3", "--steps", "4", "--seed", "0"]
    first, again = CliRunner().invoke(app, args), CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.output == again.output
    assert first.output.count("Question: ") == 3 and first.output.count("#### ") == 3
    assert len([ln for ln in first.output.splitlines() if LINE.match(ln)]) == 12
    other = CliRunner().invoke(app, [*args[:-1], "1"])
    assert other.exit_code == 0 and other.output != first.output


def test_cli_steps_segments_stdin() -> None:
    from services.cli import app

    res = CliRunner().invoke(app, ["steps", "--dataset", "gsm8k"], input="1 + 2 = 3\n#### 3")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["[0] 0:16 '1 + 2 = 3\\n#### 3'"]


def test_cli_bad_input_is_a_usage_error_not_a_traceback() -> None:
    from services.cli import app

    bad_split = CliRunner().invoke(app, ["tasks", "sample", "--split", "dev"])
    bad_rules = CliRunner().invoke(app, ["steps", "--dataset", "mmlu", "--text", "x"])
    for res in (bad_split, bad_rules):
        assert res.exit_code == 2 and not isinstance(res.exception, ValueError)
    assert "unknown split" in bad_split.output and "unknown dataset" in bad_rules.output


def test_slips_are_off_by_one_copies_carried_on_and_always_wrong_the_answer() -> None:
    solution = "7 + 5 = 12\n12 - 3 = 9\n9 * 2 = 18\n#### 18"
    assert with_slips(solution, 0.0, random.Random(0)) == solution
    # every copy slips: 12 is carried as 13, 13 - 3 = 10 as 11, 11 * 2 = 22 as 23
    assert (
        with_slips(solution, 1.0, random.Random(0))
        == "7 + 5 = 12\n13 - 3 = 10\n11 * 2 = 22\n#### 23"
    )
    problems = generate(ArithmeticConfig(max_steps=4), "train", 400, seed=0)
    rng = random.Random(1)
    slipped = [with_slips(p.solution, 0.3, rng) for p in problems]
    copies = [p.solution.count("\n") for p in problems]  # one per line: next line or answer
    clean = sum(s == p.solution for p, s in zip(problems, slipped, strict=True)) / len(problems)
    assert abs(clean - sum(0.7**n for n in copies) / len(copies)) < 0.07
    for p, s in zip(problems, slipped, strict=True):
        assert (s == p.solution) == (answer_of(s) == p.answer)  # a slip is never undone
        for line in s.split("\n")[:-1]:  # every line is a correct computation
            m = LINE.match(line)
            assert m
            a, op, k, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            assert r == (a + k if op == "+" else a - k if op == "-" else a * k)
    with pytest.raises(ValueError, match="slip rate"):
        with_slips(solution, 1.5, random.Random(0))
