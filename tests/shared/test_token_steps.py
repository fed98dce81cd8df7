"""Character steps → token ranges, with a real byte-level BPE trained here (no download)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from shared.prompts import format_prompt
from shared.steps import char_offsets, split_steps, token_step_ranges

LINES = [
    "Ann has 7 apples. Ann finds 5 more.",
    "7 + 5 = 12\n12 - 3 = 9\n9 * 2 = 18\n#### 18",
    "We have $x = 3.$  Therefore, \\[y = x^2 = 9.\\] The answer is $\\boxed{9}$.",
    "Question: How many?\nAnswer:\n",
    "So\n$$\\frac{2}{3} \\cdot \\frac{3}{4} \\cdot \\frac{4}{5} \\cdot \\frac{5}{6} \\cdot "
    "\\frac{6}{7} = \\frac{720}{2520} = \\frac{2 \\cdot 360}{7 \\cdot 360} = \\frac{2}{7} "
    "\\approx 0.2857.$$\n"
    "The answer is $\\frac{2}{7}$.",
]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(LINES * 20, trainer)
    return tok


def check_ranges(ranges: list[tuple[int, int]], n_steps: int, n_tokens: int) -> None:
    assert len(ranges) == n_steps
    assert ranges[0][0] == 0 and ranges[-1][1] == n_tokens
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(n_steps - 1))
    assert all(a <= b for a, b in ranges)


@pytest.mark.parametrize(
    ("text", "dataset"), [(LINES[1], "gsm8k"), (LINES[2], "math"), (LINES[4], "math")]
)
def test_each_token_lands_in_the_step_holding_its_first_char(bpe, text, dataset) -> None:  # type: ignore[no-untyped-def]
    enc = bpe.encode(text)
    spans = split_steps(text, dataset)
    ranges = token_step_ranges(spans, enc.offsets)
    check_ranges(ranges, len(spans), len(enc.ids))
    for (s, e), (a, b) in zip(spans, ranges, strict=True):
        assert all(s <= enc.offsets[t][0] < e for t in range(a, b))
    # gsm8k steps end at newlines and MATH steps here start with their space or newline or
    # follow an '=' before a space: byte-level BPE never merges across those, so the tokens
    # of each step decode to exactly its text
    assert len(spans) > 1
    assert [bpe.decode(enc.ids[a:b]) for a, b in ranges] == [text[s:e] for s, e in spans]


def test_response_after_prompt_and_eos_go_to_the_right_steps(bpe) -> None:  # type: ignore[no-untyped-def]
    prompt = format_prompt("How many?")
    response = LINES[1]
    enc = bpe.encode(prompt + response + "<eos>")
    # the documented recipe: keep tokens that start in the response, shift by len(prompt)
    p = len(prompt)
    offsets = [(s - p, e - p) for s, e in enc.offsets if s >= p]
    resp_ids = enc.ids[len(enc.ids) - len(offsets) :]
    assert bpe.decode(resp_ids[:-1]) == response
    spans = split_steps(response, "gsm8k")
    ranges = token_step_ranges(spans, offsets)
    check_ranges(ranges, len(spans), len(offsets))
    assert resp_ids[ranges[-1][1] - 1] == bpe.token_to_id("<eos>")  # EOS in the last step
    # an EOS appended after the offsets (n_tokens > len(offsets)) also joins the last step
    plain = bpe.encode(response)
    ranges2 = token_step_ranges(spans, plain.offsets, n_tokens=len(plain.ids) + 1)
    assert ranges2[:-1] == ranges[:-1] and ranges2[-1][1] == len(plain.ids) + 1


def test_char_offsets_from_generated_ids_with_multibyte_characters(bpe) -> None:  # type: ignore[no-untyped-def]
    text = "Price: 5 € each.\nTotal: 3 × 5 € = 15 €\n#### 15"
    ids = bpe.encode(text).ids
    offsets = char_offsets(ids, bpe.decode)
    assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
    assert all(offsets[i][1] == offsets[i + 1][0] for i in range(len(ids) - 1))
    assert any(e == s for s, e in offsets)  # '€' and '×' are split across byte tokens
    spans = split_steps(text, "gsm8k")
    ranges = token_step_ranges(spans, offsets)
    check_ranges(ranges, len(spans), len(ids))
    assert [bpe.decode(ids[a:b]) for a, b in ranges] == [text[s:e] for s, e in spans]


def test_hand_built_offsets() -> None:
    spans = [(0, 4), (4, 8), (8, 10)]
    # tokens: [0,2) [2,5) zero-width [5,8) [8,10) then two zero-width (special) tokens
    offsets = [(0, 2), (2, 5), (5, 5), (5, 8), (8, 10), (10, 10), (0, 0)]
    assert token_step_ranges(spans, offsets) == [(0, 3), (3, 4), (4, 7)]
    # a step whose characters all sit inside an earlier token gets an empty range
    assert token_step_ranges([(0, 2), (2, 3), (3, 6)], [(0, 3), (3, 6)]) == [(0, 1), (1, 1), (1, 2)]
    with pytest.raises(ValueError, match="n_tokens"):
        token_step_ranges(spans, offsets, n_tokens=3)
    with pytest.raises(ValueError, match="no steps"):
        token_step_ranges([], offsets)
