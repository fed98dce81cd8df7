"""Reasoning-step segmentation (docs/algorithms.md, Steps) and the map from character steps
to token steps.

VinePPO estimates a value at every step boundary, so a response is cut into steps whose
concatenation is the response, byte for byte: `split_steps` returns character spans
``[(start, end), ...]`` with ``spans[0][0] == 0``, ``spans[-1][1] == len(text)`` and each span
starting where the previous one ends.

Rules:
- ``gsm8k`` (and ``arithmetic``): one step per line; a line keeps its trailing newline(s);
  the ``#### answer`` line joins the step before it; blank-only parts join their neighbour.
- ``math``: the VinePPO authors' rule (their ``split_solution_inplace``, re-implemented from
  its behaviour), in four stages; a cut falls *before* the whitespace that separates two
  steps, so a step starts with its newline or space:
  1. With math regions (`math_regions`) hidden, cut before every newline and after every
     sentence end (``.`` then whitespace then a capital, not after a lone letter or after two
     letters that follow whitespace: ``e.g.``, ``Dr.``). Left to right, a part that does not
     end with ``.`` and is shorter than 20 characters, a math region counting as 60, absorbs
     the next part (the last part never does).
  2. Cut after each math region whose text ends with ``.$``, ``.$$``, ``.\\)`` or ``.\\]``.
     Left to right, a part shorter than 20 characters that does not end so absorbs the next
     part; the last such part joins the previous one.
  3. Cut before every newline inside a math region. Left to right, a part that is a lone
     opener once stripped (``$``, ``$$``, ``\\(``, ``\\[``, ``\\begin{x}``, ``[asy]``) or
     shorter than 3 characters absorbs the next part; the last such part joins the previous.
  4. A part longer than 100 characters is broken, again and again, at the candidate closest
     to its middle: first in prose (after ``,``, else `` and``, else ``:``, else `` to``,
     math hidden as in stage 1, both sides ≥ 40 characters), else in math (after ``,$``,
     ``,\\)``, ``,\\]``, ``=``, ``\\equiv``, ``+``, ``\\cancelto``, in that order of
     preference, both sides ≥ 20 characters).
  On the 500 MATH-500 gold solutions the steps are the authors' own, cut for cut
  (bench/steps.py). On purpose, texts their splitter raises on (a whole text under 20
  characters, math nested in an environment) still get steps here, and a display block
  repeated verbatim within one part is cut at its newlines every time, not only the first.

`token_step_ranges` turns character spans into token index ranges with a tokenizer's offset
mapping; `char_offsets` builds that mapping from generated token ids when only ids are at hand.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Sequence

Span = tuple[int, int]

KNOWN_DATASETS = ("gsm8k", "math", "arithmetic")

MAX_STEP_CHARS = 100
"""MATH stage 4: a part longer than this is broken again (in prose, else in math)."""
SHORT_PART_CHARS = 20
"""MATH stages 1-2: a part shorter than this that does not end a sentence absorbs the next."""
REGION_CHARS = 60
"""MATH stages 1 and 4 (prose): where the authors measure text with its math hidden, each
math region counts as this many characters (the length of their placeholder)."""
TINY_PART_CHARS = 3
"""MATH stage 3: a part shorter than this absorbs the next."""
MIN_PROSE_SIDE = 40
"""MATH stage 4: a prose cut leaves at least this many characters on each side."""
MIN_MATH_SIDE = 20
"""MATH stage 4: a cut inside math leaves at least this many characters on each side."""

_ANSWER_LINE = re.compile(r"[ \t]*####")


def split_steps(text: str, dataset: str) -> list[Span]:
    """Cut ``text`` into reasoning steps under ``dataset``'s rules; spans partition ``text``.

    An empty text gives ``[]``. Unknown ``dataset`` raises ValueError naming the known ones.
    """
    if dataset not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(KNOWN_DATASETS)}")
    if not text:
        return []
    if dataset == "math":
        return _spans_from_cuts(text, math_cuts(text))
    return _split_lines(text)


# ---------------------------------------------------------------- gsm8k / arithmetic


def _split_lines(text: str) -> list[Span]:
    # 1) a cut after every newline run; 2) the '#### answer' line joins the step before it
    cuts = [m.end() for m in re.finditer(r"\n+", text) if m.end() < len(text)]
    cuts = [c for c in cuts if not _ANSWER_LINE.match(text, c)]
    spans = _spans_from_cuts(text, cuts)
    # 3) blank-only parts join their neighbour
    return _merge_small(text, spans, min_chars=1)


# ---------------------------------------------------------------- math: regions

# Math regions are found pass by pass, in this order; a later pass sees the regions found by
# earlier ones as opaque (so `$` inside `\[...\]` or `[asy]` is not a region of its own, and
# an environment may swallow `$...$` regions found before it). Each pass takes the leftmost
# shortest non-overlapping matches. An opener without its closer is not a region.
_REGION_PASSES = tuple(
    re.compile(p, re.DOTALL)
    for p in (
        r"\[asy\].*?\[/asy\]",
        r"\$\\begin\{tabular\}.*?\\end\{tabular\}\$",
        r"\\begin\{tabular\}.*?\\end\{tabular\}",
        r"\\\(.*?\\\)",
        r"\\\[.*?\\\]",
        r"\$\$.*?\$\$",
        # `$`, not escaped, at least one character, a closing `$` not escaped nor doubled
        r"(?<!\\)\$.*?[^\\]\$(?!\$)",
        r"\\begin\{([^}]*)\}.*?\\end\{\1\}",
    )
)
_HIDDEN = "\0"
"""Fills a hidden math region (same length, so positions stay those of the text). No region
pattern, sentence end or prose cut can match it, and like the authors' placeholder it is
neither a word character nor whitespace."""


def math_regions(text: str) -> list[Span]:
    """Spans of the top-level math (and ``[asy]``) regions of ``text``, sorted and disjoint.

    Stages 1, 2 and 4 (prose) of the ``math`` rule never cut inside one; stages 3 and 4
    (math) do.
    """
    regions: list[Span] = []
    masked = text
    for pattern in _REGION_PASSES:
        found = [m.span() for m in pattern.finditer(masked)]
        if found:
            regions = [r for r in regions if not any(s <= r[0] and r[1] <= e for s, e in found)]
            regions = sorted(regions + found)
            masked = _hide(masked, found)
    return regions


def _hide(text: str, regions: Sequence[Span]) -> str:
    """``text`` with every region overwritten by _HIDDEN characters (same length)."""
    out, pos = [], 0
    for s, e in sorted(regions):
        out += [text[pos:s], _HIDDEN * (e - s)]
        pos = e
    return "".join([*out, text[pos:]])


def _hidden_pos(pos: int, regions: Sequence[Span]) -> int:
    """Where ``pos`` (outside every region) falls once each region counts REGION_CHARS."""
    return pos - sum(e - s - REGION_CHARS for s, e in regions if e <= pos)


# ---------------------------------------------------------------- math: the four stages

# stage 1: '.' not after a lone letter nor after whitespace + two letters, then \s+ capital
_SENTENCE_END = re.compile(r"(?<!\b[A-Za-z])(?<!\s[A-Za-z]{2})\.(?=\s+[A-Z])")
_PERIOD_TAILS = (".$", ".$$", ".\\)", ".\\]")
"""Stage 2: a math region ending so ends a sentence; a part ending so is never short."""
_LONE_OPENER = re.compile(r"\$\$?|\\\(|\\\[|\\begin\{[^}]*\}|\[asy\]")
_PROSE_CUTS = tuple(
    (re.compile(p), after) for p, after in ((",", 1), (r"\sand\s", 4), (":", 1), (r"\sto\s", 3))
)
"""Stage 4 prose cuts, by preference: (pattern, the cut's offset from the match start)."""
_MATH_CUTS = tuple(
    re.compile(re.escape(s)) for s in (",$", ",\\)", ",\\]", "=", "\\equiv", "+", "\\cancelto")
)
"""Stage 4 math cuts, by preference: right after the matched text."""


def math_cuts(text: str) -> list[int]:
    """Interior cut positions of ``text`` under the ``math`` rule (module docstring), sorted."""
    n = len(text)
    if n == 0:
        return []
    regions = math_regions(text)
    masked = _hide(text, regions)

    # stage 1: sentences and lines, math hidden
    cuts = {m.end() for m in _SENTENCE_END.finditer(masked)}
    cuts |= {m.start() for m in re.finditer("\n", masked)}
    bounds = [0, *sorted(c for c in cuts if 0 < c < n), n]

    def short_prose(a: int, b: int) -> bool:
        hidden_len = _hidden_pos(b, regions) - _hidden_pos(a, regions)
        return text[b - 1] != "." and hidden_len < SHORT_PART_CHARS

    bounds = _absorb_next(bounds, short_prose, last_joins_previous=False)

    # stage 2: math that ends a sentence ends a part
    bounds = _with_cuts(bounds, [e for s, e in regions if text.endswith(_PERIOD_TAILS, s, e)])

    def short(a: int, b: int) -> bool:
        return b - a < SHORT_PART_CHARS and not text.endswith(_PERIOD_TAILS, a, b)

    bounds = _absorb_next(bounds, short, last_joins_previous=True)

    # stage 3: lines inside math
    bounds = _with_cuts(bounds, [q for s, e in regions for q in _find_all("\n", text, s, e)])

    def tiny(a: int, b: int) -> bool:
        return b - a < TINY_PART_CHARS or bool(_LONE_OPENER.fullmatch(text[a:b].strip()))

    bounds = _absorb_next(bounds, tiny, last_joins_previous=True)

    # stage 4: long parts
    out: list[int] = []
    for a, b in itertools.pairwise(bounds):
        out += _break_long(text, a, b) if b - a > MAX_STEP_CHARS else []
        out.append(b)
    return out[:-1]


def _find_all(sub: str, text: str, start: int, end: int) -> list[int]:
    return [start + m.start() for m in re.finditer(re.escape(sub), text[start:end])]


def _with_cuts(bounds: list[int], cuts: Sequence[int]) -> list[int]:
    return sorted(set(bounds) | {c for c in cuts if bounds[0] < c < bounds[-1]})


def _absorb_next(
    bounds: list[int], small: Callable[[int, int], bool], last_joins_previous: bool
) -> list[int]:
    """Scan the parts ``bounds[i]:bounds[i+1]`` left to right; while a part is ``small`` it
    absorbs the next part (the grown part is judged again). A small last part joins the part
    before it when ``last_joins_previous``; a lone part stays as it is."""
    bounds = list(bounds)
    i = 0
    while i < len(bounds) - 1:
        if not small(bounds[i], bounds[i + 1]):
            i += 1
        elif i < len(bounds) - 2:
            del bounds[i + 1]
        else:
            if last_joins_previous and i > 0:
                del bounds[i]
            break
    return bounds


def _break_long(text: str, start: int, end: int) -> list[int]:
    """Stage 4: interior cuts that break the part ``text[start:end]``, sorted.

    A piece longer than MAX_STEP_CHARS is cut at its prose cut, else at its math cut, and its
    left half is judged again; a piece with neither stays. After a math cut the authors skip
    prose cuts for pieces that start inside a "math zone": the union hull of
    ``[cut, len(piece))`` over every math cut so far, in offsets *within the piece that was
    cut* but compared against offsets within the part. That is how their splitter behaves
    (it makes the zone wrong once a piece not at the part's start is cut), and it is kept
    here so that the steps are theirs.
    """
    bounds = [start, end]
    zone: Span | None = None
    i = 0
    while i < len(bounds) - 1:
        a, b = bounds[i], bounds[i + 1]
        if b - a <= MAX_STEP_CHARS:
            i += 1
            continue
        piece = text[a:b]
        in_zone = zone is not None and zone[0] <= a - start < zone[1]
        cut = None if in_zone else _prose_cut(piece)
        if cut is None:
            cut = _math_cut(piece)
            if cut is not None:
                lo, hi = (cut, len(piece)) if zone is None else zone
                zone = (min(lo, cut), max(hi, len(piece)))
        if cut is None:
            i += 1
        else:
            bounds.insert(i + 1, a + cut)
    return bounds[1:-1]


def _closest_to_middle(cands: Sequence[int], where: Callable[[int], int], total: int) -> int:
    """The candidate whose position ``where(c)`` is nearest ``total / 2`` (the first on ties)."""
    return min(cands, key=lambda c: abs(2 * where(c) - total))


def _prose_cut(piece: str) -> int | None:
    """Stage 4: the prose cut of ``piece`` (math hidden and counted REGION_CHARS), or None."""
    regions = math_regions(piece)
    masked = _hide(piece, regions)
    total = _hidden_pos(len(piece), regions)
    for pattern, after in _PROSE_CUTS:
        cands = [m.start() + after for m in pattern.finditer(masked)]
        if cands:
            cut = _closest_to_middle(cands, lambda c: _hidden_pos(c, regions), total)
            if min(cut, len(piece) - cut) >= MIN_PROSE_SIDE:
                return cut
    return None


def _math_cut(piece: str) -> int | None:
    """Stage 4: the cut of ``piece`` after '=', '+' and the like, or None."""
    for pattern in _MATH_CUTS:
        cands = [m.end() for m in pattern.finditer(piece)]
        if cands:
            cut = _closest_to_middle(cands, lambda c: c, len(piece))
            if min(cut, len(piece) - cut) >= MIN_MATH_SIDE:
                return cut
    return None


# ---------------------------------------------------------------- shared helpers


def _spans_from_cuts(text: str, cuts: Sequence[int]) -> list[Span]:
    bounds = [0, *[c for c in cuts if 0 < c < len(text)], len(text)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _merge_small(text: str, spans: list[Span], min_chars: int) -> list[Span]:
    """Join every part with fewer than ``min_chars`` non-space characters to its predecessor
    (the first such part joins its successor)."""

    def small(s: Span) -> bool:
        return len("".join(text[s[0] : s[1]].split())) < min_chars

    out: list[Span] = []
    for span in spans:
        if out and (small(span) or small(out[-1])):
            out[-1] = (out[-1][0], span[1])
        else:
            out.append(span)
    return out


# ---------------------------------------------------------------- tokens


def token_step_ranges(
    spans: Sequence[Span], offsets: Sequence[Span], n_tokens: int | None = None
) -> list[Span]:
    """Map character step spans to token index ranges ``[start, end)``, one per step.

    ``offsets[t] = (char_start, char_end)`` of token t *relative to the text the spans cut*
    (the response, not prompt + response). A token belongs to the step holding its first
    character; a zero-width token (special tokens) belongs to the step of the token before it
    (step 0 if first); tokens past ``len(offsets)`` up to ``n_tokens`` (e.g. an appended EOS)
    and tokens starting at or past the text's end belong to the last step. The ranges
    partition ``range(n_tokens)`` (default ``len(offsets)``) in order; a step that holds no
    token's first character gets an empty range.
    """
    n = len(offsets) if n_tokens is None else n_tokens
    if n < len(offsets):
        raise ValueError(f"n_tokens={n} is less than len(offsets)={len(offsets)}")
    if not spans:
        raise ValueError("no steps to map tokens to (empty response?)")
    starts = [s for s, _ in spans]
    last = len(spans) - 1
    step_of: list[int] = []  # (n,) step index per token, non-decreasing
    prev = 0
    for cs, ce in offsets:
        step = prev if ce <= cs else min(max(bisect.bisect_right(starts, cs) - 1, 0), last)
        prev = max(prev, step)
        step_of.append(prev)
    step_of += [last] * (n - len(offsets))
    # trailing zero-width tokens (EOS and friends) belong to the last step
    t = len(offsets) - 1
    while t >= 0 and offsets[t][1] <= offsets[t][0]:
        step_of[t] = last
        t -= 1
    ranges, lo = [], 0
    for k in range(len(spans)):
        hi = bisect.bisect_right(step_of, k)
        ranges.append((lo, hi))
        lo = hi
    return ranges


def char_offsets(ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[Span]:
    """Character offsets of generated tokens within ``decode(ids)`` by prefix decoding.

    Use when you have a response's token ids (e.g. from sampling) and no offset mapping:
    ``text = decode(ids)``, ``spans = split_steps(text, ds)``,
    ``token_step_ranges(spans, char_offsets(ids, decode))``. A token that completes a
    multi-byte character started by earlier tokens comes out zero-width and so joins the
    step of the token before it. O(len(ids)²) decoding; fine for responses of ~1k tokens.
    """
    full = len(decode(list(ids)))
    out: list[Span] = []
    prev = 0
    for t in range(len(ids)):
        cur = min(max(len(decode(list(ids[: t + 1]))), prev), full)
        out.append((prev, cur))
        prev = cur
    return out
