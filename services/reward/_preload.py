"""Imported once by the grader forkserver: load and warm the grader so forks start hot.

The first LaTeX parse builds the ANTLR parser and the first numeric evaluation / interval /
matrix comparison fills sympy's lazy caches (hundreds of ms on a loaded core). Doing it here,
before any fork, keeps a freshly restarted worker from timing out on an ordinary item.
"""

from __future__ import annotations

from services.reward.grading import grade

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
for _response, _gold in _WARM_UP:
    grade(_response, _gold, "math")
grade("#### 1", "1", "gsm8k")
