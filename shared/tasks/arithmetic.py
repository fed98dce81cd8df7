"""The built-in task: generated multi-step arithmetic word problems in GSM8K format.

A problem is a chain: a start value, then ``steps`` operations (+, -, *), each applied to the
previous result, so one wrong intermediate line makes the final answer wrong. The question
tells the story in a small, regular vocabulary; the solution has one computation per line
and ends with ``#### answer``::

    Question: Ann has 7 apples. Ann finds 5 more. Ann gives away 3. Ann doubles ... ?
    7 + 5 = 12
    12 - 3 = 9
    9 * 2 = 18
    #### 18

Splits never share a problem: a problem's split is a function of its arithmetic content
(start value and operations, names and objects ignored), via a hash, and `generate`
rejection-samples until it has ``n`` distinct problems of the requested split.
Run ``vineppo tasks sample --n 3 --steps 4 --seed 0`` to look at some.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from shared.example import Example, gsm8k_answer

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
"""Share of all possible problems that belongs to each split (by content hash)."""

MAX_MISSES = 20_000
"""`generate` gives up after this many draws in a row without a new problem of the split."""

NAMES = ("Ann", "Ben", "Cal", "Dan", "Eve", "Fay", "Gus", "Ivy")
OBJECTS = ("apples", "coins", "books", "cards", "pens", "shells")
PHRASES = {
    "+": ("{name} finds {k} more.", "{name} gets {k} more."),
    "-": ("{name} gives away {k}.", "{name} loses {k}."),
    "*": ("{name} ends up with {k} times as many.", "The number of {obj} grows {k} times."),
}


@dataclass(frozen=True)
class ArithmeticConfig:
    """Difficulty knobs of the generated problems. Defaults suit a tiny model trained from
    scratch; raise the step count or number sizes to make the task harder."""

    min_steps: int = 2
    """Fewest operations per problem (2..8)."""
    max_steps: int = 8
    """Most operations per problem (min_steps..8); the count is uniform in between."""
    max_start: int = 20
    """The start value is drawn from 1..max_start."""
    max_operand: int = 20
    """Operands of + and - are drawn from 1..max_operand."""
    max_factor: int = 3
    """Factors of * are drawn from 2..max_factor."""
    max_value: int = 99
    """Every intermediate result stays in 0..max_value (ops that would leave it are skipped)."""
    ops: tuple[str, ...] = ("+", "-", "*")
    """Operations to draw from, uniformly among those that keep the value in range."""

    def __post_init__(self) -> None:
        if not 2 <= self.min_steps <= self.max_steps <= 8:
            raise ValueError(
                f"need 2 <= min_steps <= max_steps <= 8, got {self.min_steps}..{self.max_steps}"
            )
        if self.max_start < 1 or self.max_operand < 1:
            raise ValueError("max_start and max_operand must be >= 1")
        if self.max_factor < 2:
            raise ValueError(f"max_factor must be >= 2, got {self.max_factor}")
        if self.max_value < max(self.max_start, 2 * self.max_operand):
            raise ValueError("max_value must be >= max_start and >= 2 * max_operand")
        if not self.ops or not set(self.ops) <= set(PHRASES):
            raise ValueError(f"ops must be a non-empty subset of {sorted(PHRASES)}, got {self.ops}")


Chain = tuple[int, tuple[tuple[str, int], ...]]
"""A problem's arithmetic content: (start, ((op, operand), ...))."""


def problem_key(chain: Chain) -> str:
    """Canonical text of a problem's arithmetic, e.g. ``'7+5-3*2'``."""
    start, steps = chain
    return str(start) + "".join(f"{op}{k}" for op, k in steps)


def split_of(key: str) -> str:
    """The split a problem belongs to, from a hash of its canonical key (seed-independent)."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for split, frac in SPLIT_FRACTIONS.items():
        acc += frac
        if u < acc:
            return split
    return "test"


def _apply(op: str, a: int, k: int) -> int:
    return a + k if op == "+" else a - k if op == "-" else a * k


def _sample_chain(cfg: ArithmeticConfig, rng: random.Random) -> Chain:
    value = rng.randint(1, cfg.max_start)
    start, steps = value, []
    for _ in range(rng.randint(cfg.min_steps, cfg.max_steps)):
        choices = []  # (op, operand) that keep value in 0..max_value
        for op in cfg.ops:
            if op == "+" and value + 1 <= cfg.max_value:
                choices.append((op, rng.randint(1, min(cfg.max_operand, cfg.max_value - value))))
            elif op == "-" and value >= 1:
                choices.append((op, rng.randint(1, min(cfg.max_operand, value))))
            elif op == "*" and 2 * value <= cfg.max_value and value > 0:
                top = min(cfg.max_factor, cfg.max_value // value)
                choices.append((op, rng.randint(2, top)))
        if not choices:  # only when max_value is tiny and ops exclude a way out
            break
        op, k = rng.choice(choices)
        steps.append((op, k))
        value = _apply(op, value, k)
    return start, tuple(steps)


def render(chain: Chain, rng: random.Random) -> tuple[str, str]:
    """(question, solution) text of a chain; names and objects drawn from ``rng``."""
    start, steps = chain
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    sentences = [f"{name} has {start} {obj}."]
    lines, value = [], start
    for op, k in steps:
        sentences.append(rng.choice(PHRASES[op]).format(name=name, k=k, obj=obj))
        new = _apply(op, value, k)
        lines.append(f"{value} {op} {k} = {new}")
        value = new
    sentences.append(f"How many {obj} does {name} have now?")
    return " ".join(sentences), "\n".join([*lines, f"#### {value}"])


def generate(cfg: ArithmeticConfig, split: str, n: int, seed: int) -> list[Example]:
    """``n`` distinct problems of ``split`` (train | validation | test); same seed, same list."""
    if split not in SPLIT_FRACTIONS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLIT_FRACTIONS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"arithmetic/{split}/{seed}")
    out: list[Example] = []
    seen: set[str] = set()
    misses = 0  # draws in a row that gave nothing new
    while len(out) < n:
        chain = _sample_chain(cfg, rng)
        key = problem_key(chain)
        if key in seen or split_of(key) != split:
            misses += 1
            if misses > MAX_MISSES:
                raise ValueError(
                    f"found only {len(out)} distinct {split} problems of {n} asked; "
                    "widen the config (more steps, larger max_operand / max_start)"
                )
            continue
        misses = 0
        seen.add(key)
        question, solution = render(chain, rng)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        out.append(
            Example(
                f"arithmetic/{split}/{digest}", question, solution, answer_of(solution), "gsm8k"
            )
        )
    return out


def with_slips(solution: str, rate: float, rng: random.Random) -> str:
    """``solution`` with copy slips: each time a result is carried on (into the next line, or
    into the ``####`` answer) it is copied one too high with probability ``rate``. Every line
    stays a correct computation of what it states, so the arithmetic is learned cleanly,
    but any slip makes the final answer wrong, at an identifiable step. Used on SFT targets to
    make a careless π_ref that RL can make careful."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"slip rate must be in [0, 1], got {rate}")
    *lines, last = solution.split("\n")
    if not lines or not last.startswith("#### "):
        raise ValueError(f"not a built-in task solution: {solution!r}")
    out, carried = [], None
    for line in lines:
        a, op, k = line.partition(" = ")[0].split(" ")
        a_val = int(a) if carried is None else carried
        value = _apply(op, a_val, int(k))
        out.append(f"{a_val} {op} {k} = {value}")
        carried = value + (rng.random() < rate)
    return "\n".join([*out, f"#### {carried}"])


def answer_of(solution: str) -> str:
    """The final answer of a solution: the text after the last ``####`` ('' if none)."""
    return gsm8k_answer(solution)
