"""Inputs built to stall the grader (structural attacks), shared by
``tests/services/reward/test_grader_attacks.py`` and ``bench/fuzz.py``.

Each is one ``GradeItem``-shaped tuple (name, response, gold, dataset, expected status or
None when only the time matters). The families: braces, parentheses, brackets and escaped
set braces nested up to 31 deep (the LaTeX parser's time grows with the depth: braces 15-30
deep inside ``\\boxed{}`` ran to the 2 s limit), correct answers wrapped deep (must stay
correct), nested fractions, roots and function calls, factorials of computed numbers,
power towers, big exponents and digit strings, calculus operators, TeX macros, scientific
notation in GSM8K answers.
"""

from __future__ import annotations

Attack = tuple[str, str, str, str, str | None]  # name, response, gold, dataset, expected


def _box(body: str) -> str:
    return "\\boxed{" + body + "}"


def nested(depth: int) -> list[Attack]:
    """Every nesting family at one depth (gold ``x+1``: the symbolic path is reached)."""
    d, half = depth, depth // 2
    shapes = {
        "braces": "{" * d + "x" + "}" * d,
        "parens": "(" * d + "x" + ")" * d,
        "brackets": "[" * d + "x" + "]" * d,
        "set braces": "\\{" * d + "x" + "\\}" * d,
        "[( alternating": "[(" * half + "x" + ")]" * half,
        "{( alternating": "{(" * half + "x" + ")}" * half,
        "sums in parens": "(1+" * d + "x" + ")" * d,
        "sums in braces": "{1+" * d + "x" + "}" * d,
        "continued fraction": "\\frac{1}{1+" * d + "x" + "}" * d,
        "fractions": "\\frac{" * d + "x" + "}{2}" * d,
        "roots": "\\sqrt{" * d + "x" + "}" * d,
        "calls": "f(" * d + "x" + ")" * d,
        "binomials": "\\binom{" * d + "x" + "}{2}" * d,
        "([{ mixed": "([{" * (d // 3) + "x" + "}])" * (d // 3),  # not in the warm-up
        "absolute values": "|1+" * d + "x" + "|" * d,  # not in the warm-up
        "roots of index 3": "\\sqrt[3]{" * d + "x" + "}" * d,  # not in the warm-up
    }
    out: list[Attack] = [(f"{n} x{d}", _box(b), "x+1", "math", None) for n, b in shapes.items()]
    wrapped = "{" * d + "x^2+1" + "}" * d
    out.append((f"correct, wrapped in braces x{d}", _box(wrapped), "x^2+1", "math", "correct"))
    wrapped = "(" * d + "x^2+1" + ")" * d
    out.append((f"correct, wrapped in parens x{d}", _box(wrapped), "x^2+1", "math", "correct"))
    return out


SINGLE: list[Attack] = [
    ("factorial of a power", _box("(10^{10})!"), "1", "math", "incorrect"),
    ("factorial of a braced power", _box("{10^{10}}!"), "1", "math", "incorrect"),
    ("factorial of a factorial", _box("(3!)!"), "720", "math", None),
    ("factorial chain", _box("9!!!!"), "1", "math", "incorrect"),
    ("power of a factorial", _box("10^{10}!"), "1", "math", "incorrect"),
    ("factorial of a cancelling sum", _box("(x-x+10^{10})!"), "x", "math", "incorrect"),
    ("power tower", _box("9^{9^{9}}"), "1", "math", "incorrect"),
    ("python power tower", _box("9**9**9**9"), "1", "math", "incorrect"),
    ("big exponent", _box("10^{99999}"), "x", "math", "incorrect"),
    ("binomial expansion", _box("(x+1)^{999}"), "x^{999}", "math", "incorrect"),
    ("tangent of a huge number", _box("\\tan(10^{999})"), "x^{2}", "math", "incorrect"),
    ("integral", _box("\\int_0^{99} x^{99} dx"), "x^{99}", "math", "incorrect"),
    ("sum", _box("\\sum_{k=1}^{99} k^{k}"), "1", "math", "incorrect"),
    ("200 digits", _box("1" * 200), "1", "math", "incorrect"),
    ("200 digits to a power", _box("1" * 200 + "^{99}"), "x^{99}", "math", "incorrect"),
    ("long sum", _box("x+" * 150 + "x"), "x", "math", "incorrect"),
    ("input", _box("\\input{/etc/passwd}"), "x", "math", "incorrect"),
    ("recursive macro", _box("\\def\\a{\\a\\a}\\a"), "x", "math", "incorrect"),
    ("1 MB of braces", "\\boxed{" + "{" * 500_000 + "}" * 500_000 + "}", "1", "math", None),
    ("gsm8k: 7e3 is not 7", "#### 7e3", "7", "gsm8k", "incorrect"),
    ("gsm8k: 1e20 is not 1e21", "#### 1e20", "1e21", "gsm8k", "incorrect"),
    ("gsm8k: a huge exponent", "#### 1e999999999", "1", "gsm8k", "incorrect"),
]

DEPTHS = (3, 4, 5, 6, 10, 15, 20, 25, 30, 31)


def grader_attacks(depths: tuple[int, ...] = DEPTHS) -> list[Attack]:
    """The full list: every nesting family at every depth, then the single attacks."""
    return [a for d in depths for a in nested(d)] + SINGLE


NORMAL: list[Attack] = [
    ("normal gsm8k", "So she has 3 + 4 = 7.\n#### 7", "7", "gsm8k", "correct"),
    ("normal math", "So the answer is \\boxed{\\frac{1}{2}}.", "0.5", "math", "correct"),
]
