"""Step segmentation: hand cases, all real gold solutions, and hypothesis properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.datasets import load_examples
from shared.steps import math_regions, split_steps


def pieces(text: str, dataset: str) -> list[str]:
    return [text[a:b] for a, b in split_steps(text, dataset)]


def assert_partition(text: str, spans: list[tuple[int, int]]) -> None:
    assert "".join(text[a:b] for a, b in spans) == text
    assert all(b > a for a, b in spans)
    if text:
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


# An independent check: at a cut, every delimiter pair opened before it is closed before it.
_PAIRS = [
    (r"(?<!\\)\\\(", r"(?<!\\)\\\)"),
    (r"(?<!\\)\\\[", r"(?<!\\)\\\]"),
    (r"\\begin\{", r"\\end\{"),
    (r"\[asy\]", r"\[/asy\]"),
]


def balanced(prefix: str) -> bool:
    outside_asy = re.sub(r"\[asy\].*?\[/asy\]", "", prefix, flags=re.S)
    if len(re.findall(r"(?<!\\)\$", outside_asy)) % 2:
        return False
    return all(len(re.findall(o, prefix)) == len(re.findall(c, prefix)) for o, c in _PAIRS)


# ---------------------------------------------------------------- hand cases


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


def test_math_splits_sentences_and_newlines_but_never_inside_math() -> None:
    text = (
        "We have $x = 1. Then y = 2.$ So the sum is large. Next we add.\n"
        "Therefore, \\[a = b. C = d.\\] Hence the answer is $\\boxed{3}$."
    )
    got = pieces(text, "math")
    assert got == [
        "We have $x = 1. Then y = 2.$",
        " So the sum is large.",
        " Next we add.\n",
        "Therefore, \\[a = b. C = d.\\]",  # the sentence ends inside the display
        " Hence the answer is $\\boxed{3}$.",
    ]


def test_math_environments_asy_and_unclosed_delimiters_are_protected() -> None:
    env = "\\begin{align*}\na &= 1. \\\\\nB &= 2.\n\\end{align*}"
    asy = '[asy]\ndraw((0,0)--(1,1));\nlabel("$A$", (0,0));\n[/asy]'
    text = f"First we line up. {env}\nA drawing follows.\n{asy}\nAnd $x = 5. Then"
    got = pieces(text, "math")
    assert any(env in p for p in got) and any(asy in p for p in got)
    assert got[-1].endswith("$x = 5. Then")  # the open $ protects the rest
    assert math_regions("a \\$5 and $b$") == [(10, 13)]


def test_math_long_sentence_is_cut_again_at_commas_outside_math() -> None:
    text = (
        "Since the first quantity is positive, the second one must be negative, "
        "and so the product of the two numbers $a \\cdot b = -12, c = 3$ is negative too, "
        "which means that the only option left for us is the third one."
    )
    spans = split_steps(text, "math")
    assert len(spans) >= 2
    assert_partition(text, spans)
    inner = text.index("-12,") + 4
    assert all(a != inner for a, _ in spans)
    assert all(text[a - 1] in ",$" for a, _ in spans[1:])


def test_math_tiny_parts_are_merged() -> None:
    text = "Yes. We know $x$ is two. No.\n\nThen we know more here."
    got = pieces(text, "math")  # 'Yes.' joins its successor, ' No.' its predecessor
    assert got == ["Yes. We know $x$ is two. No.\n\n", "Then we know more here."]


# ---------------------------------------------------------------- real data


def test_all_math500_gold_solutions(data_dir) -> None:  # type: ignore[no-untyped-def]
    examples = load_examples("math", "test", data_dir=data_dir)
    assert len(examples) == 500
    n_steps = 0
    for ex in examples:
        text = ex.solution
        spans = split_steps(text, "math")
        assert_partition(text, spans)
        for a, _ in spans[1:]:
            assert balanced(text[:a]), (ex.id, text[max(0, a - 40) : a + 40])
        n_steps += len(spans)
    assert 3 * 500 < n_steps < 15 * 500  # a sane step count, not one per char or per text


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
                text += " " if text.endswith("$") else ""
            region = o + inner + c
            regions.append((len(text), len(text) + len(region)))
            text += region
    return text, regions


@settings(max_examples=300, deadline=None)
@given(math_text())
def test_property_math_partition_and_no_cut_inside_math(case) -> None:  # type: ignore[no-untyped-def]
    text, regions = case
    spans = split_steps(text, "math")
    assert_partition(text, spans)
    assert math_regions(text) == regions
    for a, _ in spans:
        assert not any(s < a < e for s, e in regions), (text, a)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["gsm8k", "math", "arithmetic"]))
def test_property_any_text_is_partitioned(text: str, dataset: str) -> None:
    spans = split_steps(text, dataset)
    assert_partition(text, spans)
    if dataset != "math":
        assert all(text[a - 1] == "\n" for a, _ in spans[1:])
        assert all(not text[a:].lstrip(" \t").startswith("####") for a, _ in spans[1:])
