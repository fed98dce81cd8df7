"""Step segmentation: hand cases, all real gold solutions, and hypothesis properties.

The ``math`` expectations below are the VinePPO authors' splitter's output on the same texts
(``split_solution_inplace``, checked with bench/steps.py's loader); each comment says which
stage of the rule (shared/steps.py docstring) makes the cut.
"""

from __future__ import annotations

import hashlib
import re
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.datasets import load_examples
from shared.steps import math_cuts, math_regions, split_steps

# bench/steps.py prints this: the SHA-256 of the authors' own cuts of the 500 MATH-500 gold
# solutions (McGill-NLP/VinePPO @ efe7228469f2, split_solution_inplace).
AUTHORS_MATH500_FINGERPRINT = "7b298ec23c7205ee295a7c1b4ad94526290373c23298e64e7fb743df6bd65452"
AUTHORS_MATH500_MEAN_STEPS = 9.618


def fingerprint(ids: list[str], cuts: list[list[int]]) -> str:
    """SHA-256 of ``id:cut,cut,...`` lines in dataset order (as bench/steps.py computes it)."""
    lines = [f"{i}:{','.join(map(str, c))}" for i, c in zip(ids, cuts, strict=True)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def pieces(text: str, dataset: str) -> list[str]:
    return [text[a:b] for a, b in split_steps(text, dataset)]


def assert_partition(text: str, spans: list[tuple[int, int]]) -> None:
    assert "".join(text[a:b] for a, b in spans) == text
    assert all(b > a for a, b in spans)
    if text:
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


# what the text just before (or at) a MATH cut may be: stage 1 newline / sentence end,
# stage 2 sentence-ending math, stage 3 newline in math, stage 4 prose or math cut
_CUT_BEFORE = re.compile(
    r"(?:[,:=+]|\sand|\sto|\\equiv|\\cancelto|,\$|,\\\)|,\\\]|\.\$\$?|\.\\\)|\.\\\])\Z"
)


def allowed_math_cut(text: str, c: int) -> bool:
    return (
        text[c] == "\n"
        or (text[c - 1] == "." and text[c].isspace())
        or bool(_CUT_BEFORE.search(text[:c]))
    )


# ---------------------------------------------------------------- gsm8k hand cases


def test_gsm8k_lines_and_answer_line_joins_last_step() -> None:
    text = "He has 3 + 4 = 7 eggs.\nHe sells 7 * 2 = 14.\n#### 14"
    assert pieces(text, "gsm8k") == ["He has 3 + 4 = 7 eggs.\n", "He sells 7 * 2 = 14.\n#### 14"]


def test_gsm8k_blank_lines_stay_with_their_line_and_arithmetic_uses_gsm8k_rules() -> None:
    text = "\n\n1 + 2 = 3\n\n\n3 * 2 = 6\n#### 6\n"
    assert pieces(text, "gsm8k") == ["\n\n1 + 2 = 3\n\n\n", "3 * 2 = 6\n#### 6\n"]
    assert pieces(text, "arithmetic") == pieces(text, "gsm8k")


def test_unknown_dataset_names_the_known_ones_and_empty_text_has_no_steps() -> None:
    with pytest.raises(ValueError, match="gsm8k, math, arithmetic"):
        split_steps("x", "mmlu")
    assert split_steps("", "math") == []
    assert math_cuts("") == []


# ---------------------------------------------------------------- math hand cases


def test_math_long_equation_chain_is_cut_after_equals_signs() -> None:
    chain = (
        "$$\\frac{2}{3} \\cdot \\frac{3}{4} \\cdot \\frac{4}{5} \\cdot \\frac{5}{6} \\cdot "
        "\\frac{6}{7} = \\frac{2 \\cdot 3 \\cdot 4 \\cdot 5 \\cdot 6}{3 \\cdot 4 \\cdot 5 "
        "\\cdot 6 \\cdot 7} = \\frac{720}{2520} = \\frac{2 \\cdot 360}{7 \\cdot 360} = "
        "\\frac{2}{7} \\approx 0.2857.$$"
    )
    assert len(chain) == 248
    assert [i + 1 for i, ch in enumerate(chain) if ch == "="] == [87, 165, 184, 218]
    # stage 4: no prose cut (the commas are hidden in math) -> the '=' nearest the middle
    # (124) is 87; the right piece (161 chars) is cut again at its own '=' nearest its middle
    assert pieces(chain, "math") == [chain[:87], chain[87:165], chain[165:]]
    assert chain[87:165].startswith(" \\frac{2 \\cdot 3") and chain[87:165].endswith("7} =")


def test_math_prefers_equals_then_equiv_then_plus() -> None:
    eq = "$$" + " + ".join(["2^{10}"] * 6) + " = " + " + ".join(["2^{10}"] * 6) + "$$"
    assert pieces(eq, "math") == [eq[: eq.index("=") + 1], eq[eq.index("=") + 1 :]]
    mod = "$$" + " + ".join(["3^{10}"] * 6) + " \\equiv " + " + ".join(["1^{10}"] * 6) + "$$"
    cut = mod.index("\\equiv") + len("\\equiv")
    assert pieces(mod, "math") == [mod[:cut], mod[cut:]]
    plus = "Thus $$" + " + ".join(["2^{10}"] * 12) + "$$"
    got = pieces(plus, "math")  # the '+' nearest the middle
    assert got == [
        "Thus $$" + " + ".join(["2^{10}"] * 6) + " +",
        " " + " + ".join(["2^{10}"] * 6) + "$$",
    ]


def test_math_sentences_and_lines_are_cut_before_their_whitespace() -> None:
    text = (
        "The numbers are e.g. small. It is a. Fine. We note Dr. Smith said so.\n"
        "Then $x = 3.$ Next, we are done with this part."
    )
    # stage 1: no sentence end after a lone letter ('e.g.', 'a.') nor after 'Dr.'; the cut
    # after 'Fine.' is undone in stage 2 (' It is a. Fine.' is 15 < 20 characters);
    # '\nThen $x = 3.$' is short but ends with math that ends a sentence, so it stays
    assert pieces(text, "math") == [
        "The numbers are e.g. small.",
        " It is a. Fine. We note Dr. Smith said so.",
        "\nThen $x = 3.$",
        " Next, we are done with this part.",
    ]


def test_math_short_parts_join_the_next_part() -> None:
    text = (
        "We have $x = 1. Then y = 2.$ So the sum is large. Next we add.\n"
        "Therefore, \\[a = b. C = d.\\] Hence the answer is $\\boxed{3}$."
    )
    # stage 1 never cuts inside math; stage 2 cuts after '\\[a = b. C = d.\\]' and then
    # ' Next we add.' (13 characters) absorbs the next part
    assert pieces(text, "math") == [
        "We have $x = 1. Then y = 2.$",
        " So the sum is large.",
        " Next we add.\nTherefore, \\[a = b. C = d.\\]",
        " Hence the answer is $\\boxed{3}$.",
    ]
    # stage 1 measures a part with its math counted as 60 characters: both first lines have
    # 19 characters; the one without math absorbs one newline (20: long enough) and keeps
    # its step, the one with math does not (75), so stage 2 (19 < 20) merges everything
    assert pieces("Let xyz be the sums\n\nThen we add one to it.", "math") == [
        "Let xyz be the sums\n",
        "\nThen we add one to it.",
    ]
    assert pieces("Let $x$ be the sums\n\nThen we add one to it.", "math") == [
        "Let $x$ be the sums\n\nThen we add one to it."
    ]


def test_math_display_lines_are_steps_and_lone_delimiters_join_the_next_line() -> None:
    env = (
        "\\begin{align*}\n(a+b)^2 &= a^2 + 2ab + b^2 \\\\\n&= 9 + 12 + 4 \\\\\n"
        "&= 25.\n\\end{align*}"
    )
    text = f"Expanding gives\n{env}\nThus the answer is $25$."
    assert pieces(text, "math") == [  # stage 3: a cut before every newline inside math
        "Expanding gives\n\\begin{align*}",
        "\n(a+b)^2 &= a^2 + 2ab + b^2 \\\\",
        "\n&= 9 + 12 + 4 \\\\",
        "\n&= 25.",
        "\n\\end{align*}",
        "\nThus the answer is $25$.",
    ]
    # a line that is only '$$' (opening or closing) joins the line after it
    text = "We know that the sum is\n$$\n1 + 2 + 3 = 6.\n$$\nTherefore the answer is six."
    assert pieces(text, "math") == [
        "We know that the sum is",
        "\n$$\n1 + 2 + 3 = 6.",
        "\n$$\nTherefore the answer is six.",
    ]


def test_math_long_sentence_is_cut_in_prose_nearest_its_middle() -> None:
    text = (
        "The total number of ways to choose the three committee members from the group of "
        "ten people is large, and the number of ways to choose them so that no two are "
        "adjacent is smaller."
    )
    cut = text.index(",") + 1  # ',' is preferred to ' and'
    assert pieces(text, "math") == [text[:cut], text[cut:]]
    text = (
        "Since $a \\equiv 2 \\pmod 7$, we have $a^3 + 4a + 1 \\equiv 8 + 8 + 1 \\equiv 17 "
        "\\equiv 3 \\pmod 7$ and also $a^2 \\equiv 4$, which is what we wanted to show here."
    )
    # the ',' nearest the middle (math counted as 60 characters) leaves 26 < 40 on its left,
    # so the cut goes after ' and' (before its space)
    cut = text.index(" and") + 4
    assert pieces(text, "math") == [text[:cut], text[cut:]]


def test_math_a_piece_made_by_a_math_cut_is_cut_again_in_math() -> None:
    terms = " + ".join(f"f({k}, {k + 1})" for k in range(5, 17))
    text = f"$f(1, 2) + f(2, 3) + f(3, 4) = 3 + 5 + 7 = {terms}$."
    # the second '=' is nearest the middle; the 134-character right piece has an unmatched
    # '$', so its commas are visible, yet it is cut at the '+' nearest its middle (a piece
    # that starts inside the authors' "math zone" gets no prose cut)
    first = text.index("7 =") + 3
    second = text.index("f(10, 11) +") + len("f(10, 11) +")
    assert pieces(text, "math") == [text[:first], text[first:second], text[second:]]


def test_math_regions_follow_the_authors_passes() -> None:
    assert math_regions("a \\$5 and $b$") == [(10, 13)]  # \$ is a dollar sign
    assert math_regions("an open $x = 1 and more") == []  # no closing $: not a region
    text = "see \\[a = $b$\\] and $$c$$ then $d$"
    assert math_regions(text) == [(4, 15), (20, 25), (31, 34)]
    asy = '[asy]\nlabel("$A$", (0,0));\n[/asy]'
    assert math_regions(f"Draw {asy}.") == [(5, 5 + len(asy))]
    env = "\\begin{align*}\nx &= 1 \\text{ if $y$ is odd}\n\\end{align*}"
    assert math_regions(f"So {env}.") == [(3, 3 + len(env))]  # swallows the $y$ found before


def test_math_where_the_authors_splitter_fails_or_repeats_itself() -> None:
    # The authors' splitter raises on a whole text under 20 characters and on math nested in
    # an environment; the trainer needs steps for every response, so these get the natural ones.
    assert pieces("Short.", "math") == ["Short."]
    text = (
        "We get\n\\begin{align*}\nx &= 1 \\text{ when $y$ is odd,} \\\\\n"
        "x &= 2 \\text{ otherwise.}\n\\end{align*}\nSo we are done here."
    )
    assert pieces(text, "math") == [
        "We get\n\\begin{align*}",
        "\nx &= 1 \\text{ when $y$ is odd,} \\\\",
        "\nx &= 2 \\text{ otherwise.}",
        "\n\\end{align*}",
        "\nSo we are done here.",
    ]
    # theirs cuts a display block repeated verbatim within one part at its newlines only
    # the first time; here every copy is cut
    text = "We have $$x = 1\n+ 2$$ and again $$x = 1\n+ 2$$ as shown above here."
    assert pieces(text, "math") == [
        "We have $$x = 1",
        "\n+ 2$$ and again $$x = 1",
        "\n+ 2$$ as shown above here.",
    ]


# ---------------------------------------------------------------- real data


def test_math500_gold_splits_are_the_authors(data_dir) -> None:  # type: ignore[no-untyped-def]
    examples = load_examples("math", "test", data_dir=data_dir)
    assert len(examples) == 500
    cuts = []
    for ex in examples:
        spans = split_steps(ex.solution, "math")
        assert_partition(ex.solution, spans)
        assert all(allowed_math_cut(ex.solution, a) for a, _ in spans[1:])
        cuts.append([a for a, _ in spans[1:]])
    assert statistics.mean(len(c) + 1 for c in cuts) == pytest.approx(AUTHORS_MATH500_MEAN_STEPS)
    assert fingerprint([e.id for e in examples], cuts) == AUTHORS_MATH500_FINGERPRINT


def test_all_gsm8k_test_gold_solutions(data_dir) -> None:  # type: ignore[no-untyped-def]
    examples = load_examples("gsm8k", "test", data_dir=data_dir)
    assert len(examples) == 1319
    for ex in examples:
        text = ex.solution
        spans = split_steps(text, "gsm8k")
        assert_partition(text, spans)
        lines = [ln for ln in text.split("\n") if ln.strip()]
        assert len(spans) == len(lines) - 1  # one per line; '#### n' joins the last
        assert all(text[b - 1] == "\n" for _, b in spans[:-1])
        assert "####" in text[spans[-1][0] :] and "####" not in text[: spans[-1][0]]


# ---------------------------------------------------------------- properties

_PROSE = st.text(alphabet="abcXY 12=,.;:!?\n", max_size=40)
_INNER = st.text(alphabet="abx 12=+,.;:!?\n", max_size=30)
_WRAP = [("$", "$"), ("$$", "$$"), ("\\(", "\\)"), ("\\[", "\\]"), ("[asy]", "[/asy]")]
_WRAP += [("\\begin{align*}", "\\end{align*}"), ("\\begin{cases}", "\\end{cases}")]


@st.composite
def math_text(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]]]:
    """Random prose with well-formed math regions; returns the text and the region spans."""
    text, regions = "", []
    for _ in range(draw(st.integers(0, 8))):
        text += draw(_PROSE)
        if draw(st.booleans()):
            o, c = draw(st.sampled_from(_WRAP))
            inner = draw(_INNER)
            if o == "$":
                inner = inner or "x"  # "$$" would open display math
            if o.startswith("$") and text.endswith("$"):
                text += " "  # "$a$" + "$$b$$" would read as "$a" + "$$$b$$"
            region = o + inner + c
            regions.append((len(text), len(text) + len(region)))
            text += region
    return text, regions


@settings(max_examples=300, deadline=None)
@given(math_text())
def test_property_math_partition_regions_and_allowed_cuts(case) -> None:  # type: ignore[no-untyped-def]
    text, regions = case
    spans = split_steps(text, "math")
    assert_partition(text, spans)
    assert math_regions(text) == regions
    assert all(allowed_math_cut(text, a) for a, _ in spans[1:]), text


_TOKENS = [*"aZ 1=+,.:$\\()[]{}\n", "$$", "\\[", "\\]", " and ", " to ", "\\begin{a}"]
_TOKENS += ["\\end{a}", "[asy]", "[/asy]", "\\equiv", "Then "]
_MATHY = st.lists(st.sampled_from(_TOKENS), max_size=150).map("".join)
"""Delimiter-heavy text: unmatched, nested and interleaved math of every kind."""


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), _MATHY), st.sampled_from(["gsm8k", "math", "arithmetic"]))
def test_property_any_text_is_partitioned(text: str, dataset: str) -> None:
    spans = split_steps(text, dataset)
    assert_partition(text, spans)
    if dataset == "math":
        assert all(allowed_math_cut(text, a) for a, _ in spans[1:])
    else:
        assert all(text[a - 1] == "\n" for a, _ in spans[1:])
        assert all(not text[a:].lstrip(" \t").startswith("####") for a, _ in spans[1:])
