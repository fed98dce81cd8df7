"""Imported once by the grader forkserver: load and warm the grader so forks start hot.

The first LaTeX parse builds the ANTLR parser and the first numeric evaluation / interval /
matrix comparison fills sympy's lazy caches (hundreds of ms on a loaded core). Doing it here,
before any fork, keeps a freshly restarted worker from timing out on an ordinary item.
"""

from __future__ import annotations

from services.reward.grading import grade
from services.reward.limits import DEFAULT_LIMITS

_WARM_UP = [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{3\\sqrt{13}}", "16"),
    ("\\boxed{6 - 5i}", "4005"),
    ("\\boxed{4}", "\\frac{20000}{\\pi}"),
    ("\\boxed{204_5}", "18"),
    ("\\boxed{(1, 2]}", "(1, 2]"),
    ("\\boxed{(-\\infty, 2) \\cup (3, \\infty)}", "(-\\infty,2)\\cup(3,\\infty)"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\3\\end{pmatrix}"),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2"),
    ("\\boxed{1, 2}", "2, 1"),
    ("\\boxed{50\\%}", "0.5"),
    ("\\boxed{\\cot x}", "\\frac{11}{36}"),
    ("\\boxed{y = 2x + 3}", "y = 2x + 4"),
    ("\\boxed{\\frac{1}{2004!}}", "\\frac{1}{2006!}"),
]
# Nesting within the caps (depth <= Limits.max_brace_depth): the LaTeX parser's first parse
# of a new nesting shape costs 0.1-1 s (it extends its prediction tables), later ones
# ~30 ms; learned here, before any fork, no request pays for it (20 concurrent structural
# attacks were answered in up to 4.1 s without this, 2.x s with it: bench/fuzz.py).
_CLOSE = {"(": ")", "[": "]", "{": "}", "\\{": "\\}", "[(": ")]", "{(": ")}", "(1+": ")",
          "{1+": "}", "\\frac{1}{1+": "}", "f(": ")", "\\sqrt{": "}",
          "\\binom{": "}{2}"}  # fmt: skip
for _response, _gold in _WARM_UP:
    grade(_response, _gold, "math")
for _open in _CLOSE:
    for _depth in range(1, DEFAULT_LIMITS.max_brace_depth + 1):
        _body = _open * _depth + "x" + _CLOSE[_open] * _depth
        grade("\\boxed{" + _body + "}", "x+1", "math")
grade("#### 1", "1", "gsm8k")
