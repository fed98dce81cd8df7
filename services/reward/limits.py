"""Size caps on a MATH answer before any symbolic work: what makes the LaTeX parser or sympy
slow (deep nesting, power towers, huge numbers and factorials, calculus operators) is
refused up front, and the answer compared as text (`grading.grade`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.reward import textnorm


@dataclass(frozen=True)
class Limits:
    """Size caps checked before any symbolic work (an answer over a cap is compared as text).

    The LaTeX parser's time grows with nesting depth, sympy's with exponents, digits and
    length; these caps keep every structural attack (bench/fuzz.py) far below the sandbox's
    time limit. MATH-500's gold answers stay well inside them: brace depth ≤ 2 (after
    ``textnorm.unwrap_groups``), exponents ≤ 8, numbers ≤ 11 digits, ≤ 47 characters, no
    factorial, no '|'."""

    max_answer_chars: int = 200
    max_exponent: int = 100
    max_factorial: int = 5_000
    max_brace_depth: int = 5
    max_digits: int = 40
    max_bars: int = 6  # '|': absolute values nest too, and no depth can be counted
    # CPU seconds one item's symbolic check (parse + verify) may use, then it is answered as
    # over a cap; None: unbounded. Needs signals: applied in a process's main thread only
    # (the sandbox's workers). Bounds what an input no cap foresaw can cost.
    symbolic_cpu_s: float | None = None
    enabled: bool = True  # False only to exercise the sandbox's hard time limit in tests


DEFAULT_LIMITS = Limits()

_POW_NUM = re.compile(r"(?:\^|\*\*)\s*\{?\s*(\d+)")
_DIGITS = re.compile(r"\d+")
_SIMPLE_ARGUMENT = re.compile(r"[A-Za-z0-9+\-]*")
_CALCULUS = ("\\int", "\\sum", "\\prod", "\\lim", "\\partial", "\\oint")


def over_limits(s: str, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """Why ``s`` is too big for symbolic work (power towers, huge factorials...), or None."""
    if not limits.enabled:
        return None
    if len(s) > limits.max_answer_chars:
        return f"answer longer than {limits.max_answer_chars} characters"
    if textnorm.brace_depth(s) > limits.max_brace_depth:
        return f"braces nested deeper than {limits.max_brace_depth}"
    if s.count("|") > limits.max_bars:
        return f"more than {limits.max_bars} absolute-value bars"
    if textnorm.nested_power(s) or "**" in s:
        return "nested exponents (power tower)"
    if any(op in s for op in _CALCULUS):
        return "a calculus operator (integral, sum, product, limit)"
    if any(len(m) > limits.max_digits for m in _DIGITS.findall(s)):
        return f"a number with more than {limits.max_digits} digits"
    if any(int(m) > limits.max_exponent for m in _POW_NUM.findall(s)):
        return f"an exponent above {limits.max_exponent}"
    return _factorial_over_limits(s, limits)


def _factorial_over_limits(s: str, limits: Limits) -> str | None:
    """Why a factorial in ``s`` could be huge, or None. Allowed: ``n!`` of a number up to
    ``max_factorial``, of a symbol, or of a bracket of symbols, numbers, ``+`` and ``-`` whose
    numbers add up to at most that (``(n+1)!``). Refused: a factorial of anything computed
    (``(10^{10})!``, ``{10^{10}}!``, ``(3!)!``, ``5!!``) and a factorial next to a power
    (``10^{10}!`` is 10 to the 10!)."""
    if "!" not in s:
        return None
    too_big = f"a factorial above {limits.max_factorial}! (or of a computed number)"
    if "^" in s or "**" in s:
        return "a factorial together with a power"
    for i, ch in enumerate(s):
        if ch != "!" or s.startswith("!=", i):
            continue
        j = i
        while j > 0 and s[j - 1] == " ":
            j -= 1
        before = s[j - 1] if j > 0 else ""
        if before.isdigit():
            start = j - 1
            while start > 0 and s[start - 1].isdigit():
                start -= 1
            arg: str | None = s[start:j]
        elif before and before in ")}]":
            arg = _group_before(s, j - 1)
            if arg is None or not _SIMPLE_ARGUMENT.fullmatch(arg):
                return too_big
        elif before.isalpha():
            continue  # a symbol: n!
        else:
            return too_big  # '!!', '!' after an operator, at the start
        if sum(int(d) for d in _DIGITS.findall(arg or "")) > limits.max_factorial:
            return too_big
    return None


def _group_before(s: str, close: int) -> str | None:
    """Content of the bracket group that closes at ``close`` (None if unbalanced)."""
    depth = 0
    for k in range(close, -1, -1):
        depth += (s[k] in ")}]") - (s[k] in "({[")
        if depth == 0:
            return s[k + 1 : close]
    return None
