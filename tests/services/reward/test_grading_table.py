"""Table-driven grader cases: (response, gold, dataset, expected status), a comment per row."""

from __future__ import annotations

import pytest

from services.reward.grading import extract_answer, grade

B = "\\boxed"
G, M = "gsm8k", "math"

CASES: list[tuple[str, str, str, str]] = [
    # --- GSM8K: the '####' format --------------------------------------------------------
    ("She earns 9 * 2 = 18.\n#### 18", "18", G, "correct"),  # plain final answer
    ("#### 18", "Janet sells 9 eggs.\n#### 18", G, "correct"),  # gold is a full solution
    ("#### 19", "Janet sells 9 eggs.\n#### 18", G, "incorrect"),  # off by one
    ("#### 1,000", "1000", G, "correct"),  # thousands separator stripped
    ("#### $1,000", "1000", G, "correct"),  # dollar sign stripped
    ("#### 18 dollars", "18", G, "correct"),  # trailing unit stripped
    ("#### $18.00", "18", G, "correct"),  # decimal that equals an integer
    ("#### 18.", "18", G, "correct"),  # trailing period
    ("#### -7", "-7", G, "correct"),  # negative answer
    ("#### 7", "-7", G, "incorrect"),  # sign matters
    ("#### 0.5", "0.5", G, "correct"),  # decimal answer
    ("#### 0.50", "0.5", G, "correct"),  # trailing zero in a decimal
    ("#### .5", "0.5", G, "correct"),  # leading-dot decimal
    ("#### 0.5000001", "0.5", G, "correct"),  # within the 1e-6 relative tolerance
    ("#### 0.5001", "0.5", G, "incorrect"),  # outside the relative tolerance
    ("#### 1/2", "0.5", G, "correct"),  # a fraction equals the decimal
    ("#### 1000001", "1000000", G, "incorrect"),  # integers compare exactly, no tolerance
    ("#### 123456789012345678901", "123456789012345678901", G, "correct"),  # big integer exact
    ("#### 123456789012345678902", "123456789012345678901", G, "incorrect"),  # big int off by one
    ("first 5\n#### 3\nthen #### 4", "4", G, "correct"),  # the LAST '####' counts
    ("#### 3\n#### 4", "3", G, "incorrect"),  # an earlier '####' does not count
    ("#### 42\nextra text 7", "42", G, "correct"),  # text after the answer line ignored
    ("####42", "42", G, "correct"),  # no space after the marker
    ("#### 5 apples and 3 pears", "5", G, "correct"),  # first number of the answer line
    ("The answer is 18.", "18", G, "correct"),  # fallback: "The answer is X"
    ("so the answer is: $1,234", "1234", G, "correct"),  # fallback with colon, $ and comma
    ("We get 3 + 4 = 7 eggs.", "7", G, "correct"),  # fallback: last number in the text
    ("We get 3 + 4 = 7 eggs.", "8", G, "incorrect"),  # last-number fallback still compares
    (f"so {B}{{12}}", "12", G, "correct"),  # fallback: a boxed answer in a GSM8K response
    ("no numbers at all", "12", G, "no_answer"),  # nothing to extract
    ("", "12", G, "no_answer"),  # empty response
    ("#### 18", "no number here", G, "bad_gold"),  # gold without a number
    ("#### 18", "", G, "bad_gold"),  # empty gold
    ("#### 18", "#### ", G, "bad_gold"),  # gold solution with an empty answer
    ("#### 1e3", "1000", G, "correct"),  # scientific notation is a number: 1e3 = 1000
    ("#### 7e3", "7", G, "incorrect"),  # 7e3 is 7000, never 7 with a suffix 'e3'
    ("#### 1e20", "1e21", G, "incorrect"),  # the exponents differ: not both 1
    ("#### 1E21", "1e21", G, "correct"),  # either letter
    ("#### 2.5e-1 dollars", "0.25", G, "correct"),  # negative exponent, a unit after it
    ("#### 1e999999999", "1", G, "incorrect"),  # a huge exponent is never expanded
    ("#### 18\x00", "18", G, "correct"),  # NUL bytes are dropped
    ("#### 18\ud800", "18", G, "correct"),  # a lone surrogate does not break grading
    ("#### 7.5", "15/2", G, "correct"),  # fraction gold equals decimal answer
    ("#### 2,5", "25", G, "correct"),  # malformed separator read as 25 (commas stripped)
    ("Total: 12 + 30 = 42\n#### 42", "#### 42", G, "correct"),  # built-in arithmetic task format
    ("x\n" * 1000 + "#### 9", "9", G, "correct"),  # long response, answer at the end
    # --- MATH: extraction ------------------------------------------------------------------
    (f"Thus {B}{{5}}.", "5", M, "correct"),  # plain boxed integer
    (f"{B}{{4}} then {B}{{5}}", "5", M, "correct"),  # the LAST box counts
    (f"{B}{{4}} then {B}{{5}}", "4", M, "incorrect"),  # an earlier box does not count
    (f"{B}{{\\frac{{1}}{{2}}}}", "\\frac12", M, "correct"),  # nested braces matched
    ("\\fbox{7}", "7", M, "correct"),  # \fbox is a box too
    (f"{B} 7$.", "7", M, "correct"),  # \boxed 5 without braces
    (f"{B}{{x^{{2}}+1}}", "x^2+1", M, "correct"),  # braces inside the box
    (f"{B}{{5", "5", M, "no_answer"),  # unbalanced box, no fallback phrase
    ("The final answer is $5$. I hope it is correct.", "5", M, "correct"),  # Minerva fallback
    ("The answer is 12", "12", M, "correct"),  # plain "answer is" fallback
    ("no box here", "5", M, "no_answer"),  # nothing to extract
    (f"{B}{{}}", "5", M, "no_answer"),  # empty box
    (f"{B}{{5}}", "The answer is $\\boxed{5}$.", M, "correct"),  # gold solution's last box
    (f"{B}{{6}}", "So \\boxed{4} and then \\boxed{5}", M, "incorrect"),  # gold: its last box
    (f"{B}{{5}}", "", M, "bad_gold"),  # empty gold
    (f"{B}{{5}}", "\\boxed{}", M, "bad_gold"),  # gold box with nothing in it
    # --- MATH: LaTeX forms that must agree ---------------------------------------------------
    (f"{B}{{\\dfrac{{1}}{{2}}}}", "\\frac{1}{2}", M, "correct"),  # \dfrac == \frac
    (f"{B}{{\\tfrac{{1}}{{2}}}}", "\\frac{1}{2}", M, "correct"),  # \tfrac == \frac
    (f"{B}{{\\frac12}}", "\\frac{1}{2}", M, "correct"),  # \frac12 shorthand
    (f"{B}{{0.5}}", "\\frac{1}{2}", M, "correct"),  # decimal == fraction
    (f"{B}{{\\frac{{1}}{{2}}}}", "0.5", M, "correct"),  # fraction == decimal gold
    (f"{B}{{1/2}}", "\\frac12", M, "correct"),  # slash fraction
    (f"{B}{{\\frac 34}}", "\\frac{3}{4}", M, "correct"),  # \frac 34 with a space
    (f"{B}{{\\frac{{2}}{{4}}}}", "\\frac{1}{2}", M, "correct"),  # unreduced fraction
    (f"{B}{{\\frac{{1}}{{3}}}}", "\\frac{1}{2}", M, "incorrect"),  # different fraction
    (f"{B}{{x = 3}}", "3", M, "correct"),  # 'x = 3' vs '3'
    (f"{B}{{3}}", "x=3", M, "correct"),  # '3' vs gold 'x=3'
    (f"{B}{{y = 2x + 3}}", "y=2x+3", M, "correct"),  # spacing in an equation
    (
        f"{B}{{\\left( 3, \\frac{{\\pi}}{{2}} \\right)}}",
        "(3,\\frac{\\pi}{2})",
        M,
        "correct",
    ),  # \left
    (f"{B}{{90^\\circ}}", "90", M, "correct"),  # degrees symbol dropped
    (f"{B}{{90}}", "90^{\\circ}", M, "correct"),  # braced degrees symbol dropped
    (f"{B}{{5\\text{{ cm}}}}", "5", M, "correct"),  # trailing unit in \text dropped
    (f"{B}{{15\\mbox{{ cm}}^2}}", "15", M, "correct"),  # \mbox unit with a power
    (f"{B}{{10{{,}}080}}", "10080", M, "correct"),  # braced-comma thousands separator
    (f"{B}{{10,080}}", "10,\\!080", M, "correct"),  # thousands separator with \!
    (f"{B}{{10080}}", "10,\\!080", M, "correct"),  # separator vs none
    (f"{B}{{\\sqrt{{2}}}}", "\\sqrt2", M, "correct"),  # \sqrt2 shorthand
    (f"{B}{{\\frac{{\\sqrt{{2}}}}{{2}}}}", "\\frac{1}{\\sqrt{2}}", M, "correct"),  # rationalised
    (f"{B}{{2\\sqrt{{3}}}}", "\\sqrt{12}", M, "correct"),  # simplified radical
    (f"{B}{{4}}", "4\\sqrt{2}", M, "incorrect"),  # 4 vs 4√2
    (f"{B}{{4\\sqrt{{2}}}}", "4", M, "incorrect"),  # 4√2 vs 4
    (f"{B}{{\\pi}}", "\\pi", M, "correct"),  # constant
    (f"{B}{{3.14}}", "\\pi", M, "incorrect"),  # approximation is not pi
    (f"{B}{{6-5i}}", "6 - 5i", M, "correct"),  # complex number, spacing
    (f"{B}{{6+5i}}", "6 - 5i", M, "incorrect"),  # complex sign matters
    (f"{B}{{x^2+2x+1}}", "(x+1)^2", M, "correct"),  # expanded polynomial
    (f"{B}{{x^2+2x}}", "(x+1)^2", M, "incorrect"),  # different polynomial
    (f"{B}{{\\$18.90}}", "\\$18.90", M, "correct"),  # dollar amount, identical
    (f"{B}{{18.90}}", "\\$18.90", M, "correct"),  # dollar sign dropped
    (f"{B}{{\\text{{(B)}}}}", "\\text{(B)}", M, "correct"),  # multiple-choice letter
    (f"{B}{{\\text{{Evelyn}}}}", "\\text{Evelyn}", M, "correct"),  # word answer
    (f"{B}{{evelyn}}", "\\text{Evelyn}", M, "correct"),  # word answer, case-insensitive
    (f"{B}{{Levyne}}", "\\text{Evelyn}", M, "incorrect"),  # anagram is not the same word
    (f"{B}{{\\text{{odd}}}}", "\\text{even}", M, "incorrect"),  # different word
    (f"{B}{{52_8}}", "52_8", M, "correct"),  # base subscript, identical
    (
        f"{B}{{\\begin{{pmatrix}} 1 \\\\ 2 \\end{{pmatrix}}}}",
        "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
        M,
        "correct",
    ),  # matrix spacing
    (
        f"{B}{{\\begin{{pmatrix}} 1 \\\\ 3 \\end{{pmatrix}}}}",
        "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
        M,
        "incorrect",
    ),  # different matrix
    # --- MATH: intervals ----------------------------------------------------------------------
    (f"{B}{{(1,2)}}", "(1, 2)", M, "correct"),  # same open interval
    (f"{B}{{[1,2)}}", "(1,2)", M, "incorrect"),  # bracket types must match
    (f"{B}{{(1,2]}}", "(1,2)", M, "incorrect"),  # right bracket type must match
    (f"{B}{{(-\\infty, 3)}}", "(-\\infty,3]", M, "incorrect"),  # closed vs open at 3
    (f"{B}{{[-2,7]}}", "x \\in [-2,7]", M, "correct"),  # 'x \in' prefix
    (f"{B}{{(-\\infty,2)\\cup(3,\\infty)}}", "(-\\infty, 2) \\cup (3, \\infty)", M, "correct"),
    # ^ union of intervals, spacing differs
    (f"{B}{{(-\\infty,2]\\cup(3,\\infty)}}", "(-\\infty, 2) \\cup (3, \\infty)", M, "incorrect"),
    # ^ union with one bracket changed
    # --- MATH: multi-answer sets ----------------------------------------------------------------
    (f"{B}{{1728}}", "1331 and 1728", M, "incorrect"),  # one of two answers
    (f"{B}{{1331, 1728}}", "1331 and 1728", M, "correct"),  # both answers, comma
    (f"{B}{{1728, 1331}}", "1331 and 1728", M, "correct"),  # order does not matter
    (f"{B}{{1331 \\text{{ and }} 1728}}", "1331, 1728", M, "correct"),  # \text{ and }
    (f"{B}{{1, -2}}", "-2,1", M, "correct"),  # set of roots, any order
    (f"{B}{{1, 2}}", "-2,1", M, "incorrect"),  # one root wrong
    (f"{B}{{1, -2, 3}}", "-2,1", M, "incorrect"),  # extra answer
    (f"{B}{{\\{{1,2\\}}}}", "1,2", M, "correct"),  # set braces
    (f"{B}{{3, 5, 7}}", "3,5,7", M, "correct"),  # three answers
    (f"{B}{{1\\pm\\sqrt{{5}}}}", "1 \\pm \\sqrt{5}", M, "correct"),  # ± spacing
    (f"{B}{{(1,2), (3,4)}}", "(3,4),(1,2)", M, "correct"),  # set of points, any order
    # --- MATH: percent -------------------------------------------------------------------------
    (f"{B}{{50}}", "0.5", M, "incorrect"),  # no ×100 conversion without a %
    (f"{B}{{0.5}}", "50", M, "incorrect"),  # ... in either direction
    (f"{B}{{50\\%}}", "0.5", M, "correct"),  # with % present the conversion applies
    (f"{B}{{50\\%}}", "50\\%", M, "correct"),  # identical percents
    (f"{B}{{50\\%}}", "50", M, "correct"),  # percent sign dropped against a bare 50
    (f"{B}{{50%}}", "50\\%", M, "correct"),  # unescaped percent
    # --- MATH: tiny numbers (math-verify rounds to 6 places) -----------------------------------
    (f"{B}{{1/2^{{99}}}}", "1/2^{98}", M, "incorrect"),  # 2^-99 vs 2^-98
    (f"{B}{{\\frac{{1}}{{2^{{99}}}}}}", "\\frac{1}{2^{99}}", M, "correct"),  # identical
    (f"{B}{{\\frac{{1}}{{2004!}}}}", "\\frac{1}{2006!}", M, "incorrect"),  # tiny factorials
    (f"{B}{{\\frac{{1}}{{1000000}}}}", "\\frac{1}{1000001}", M, "incorrect"),  # close, not equal
    (f"{B}{{10^{{-9}}}}", "0.000000001", M, "correct"),  # tiny number, two forms
    (f"{B}{{.0000672}}", ".0000672", M, "correct"),  # leading-dot decimal
    # --- MATH: size caps and adversarial answers (answered fast, never hang) -------------------
    (f"{B}{{2^{{2^{{2^{{2^{{2^{{22}}}}}}}}}}}}", "3", M, "incorrect"),  # power tower: capped
    (f"{B}{{100000!}}", "3", M, "incorrect"),  # huge factorial: capped
    (f"{B}{{9^{{9999999}}}}", "3", M, "incorrect"),  # huge exponent: capped
    (f"{B}{{2^{{2^{{2^{{2}}}}}}}}", "2^{2^{2^{2}}}", M, "correct"),  # identical tower: string match
    (f"{B}{{" + "{" * 50_000 + "1" + "}" * 50_000 + "}", "1", M, "incorrect"),  # 50k braces
    (f"{B}{{{'9' * 5000}}}", "3", M, "incorrect"),  # a 5,000-digit number: capped
    ("x" * 1_000_000 + f"{B}{{5}}", "5", M, "correct"),  # a 1 MB response
    (f"{B}{{5}}\x00", "5", M, "correct"),  # NUL byte after the box
    (f"{B}{{5\ud800}}", "5", M, "incorrect"),  # lone surrogate inside the answer
]


@pytest.mark.parametrize(("response", "gold", "dataset", "expected"), CASES)
def test_grade_table(response: str, gold: str, dataset: str, expected: str) -> None:
    verdict = grade(response, gold, dataset)
    assert verdict.status == expected, verdict
    assert verdict.reward == (1.0 if expected == "correct" else 0.0)


def test_table_is_large_and_covers_both_datasets() -> None:
    assert len(CASES) >= 100
    assert {c[2] for c in CASES} == {G, M}
    assert {c[3] for c in CASES} >= {"correct", "incorrect", "no_answer", "bad_gold"}


def test_fallbacks_can_be_switched_off() -> None:
    assert grade("The answer is 18.", "18", G, fallbacks=False).status == "no_answer"
    assert grade("The final answer is $5$.", "5", M, fallbacks=False).status == "no_answer"
    assert grade("#### 18", "18", G, fallbacks=False).status == "correct"


def test_extract_answer_and_verdict_fields() -> None:
    assert extract_answer("a \\boxed{\\frac{1}{2}} b", "math") == "\\frac{1}{2}"
    assert extract_answer("#### $1,000", "gsm8k") == "$1,000"
    assert extract_answer("nothing", "math") is None
    v = grade("\\boxed{\\dfrac12}", "0.5", M)
    assert (v.extracted, v.normalized, v.gold_normalized) == ("\\dfrac12", "\\frac{1}{2}", "0.5")
    v = grade("#### $1,000", "1000", G)
    assert (v.extracted, v.normalized, v.gold_normalized) == ("$1,000", "1000", "1000")
    v = grade("\\boxed{2^{2^{2^{2^{2^{22}}}}}}", "3", M)
    assert v.detail is not None and "power tower" in v.detail
    with pytest.raises(ValueError, match="unknown dataset"):
        extract_answer("x", "mmlu")
    assert grade("x", "1", "mmlu").status == "error"
