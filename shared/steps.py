"""Reasoning-step segmentation (DESIGN.md §1) and the map from character steps to token steps.

VinePPO estimates a value at every step boundary, so a response is cut into steps whose
concatenation is the response, byte for byte: `split_steps` returns character spans
``[(start, end), ...]`` with ``spans[0][0] == 0``, ``spans[-1][1] == len(text)`` and each span
starting where the previous one ends.

Rules:
- ``gsm8k`` (and ``arithmetic``): one step per line; a line keeps its trailing newline(s);
  the ``#### answer`` line joins the step before it; blank-only parts join their neighbour.
- ``math``: cut after newlines and after sentence ends (``.``/``!``/``?`` followed by space),
  never inside ``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]``, ``\\begin{x}…\\end{x}``,
  ``[asy]…[/asy]`` (an unclosed delimiter protects the rest of the text). A part longer than
  100 characters is cut again at ``,``/``;``/``:``/``=`` in prose or where a math region ends,
  never inside math. Parts with fewer than 8 non-space characters join their neighbour.

`token_step_ranges` turns character spans into token index ranges with a tokenizer's offset
mapping; `char_offsets` builds that mapping from generated token ids when only ids are at hand.
"""

from __future__ import annotations

import bisect
import itertools
import re
import sys
from collections.abc import Callable, Sequence

Span = tuple[int, int]

KNOWN_DATASETS = ("gsm8k", "math", "arithmetic")
MAX_STEP_CHARS = 100
"""MATH parts longer than this are cut again at a weaker boundary (comma, '=', math end)."""
MIN_STEP_CHARS = 8
"""MATH parts with fewer non-space characters than this join their neighbour."""

_BEGIN = re.compile(r"\\begin\{([^{}]*)\}")
_SENTENCE_END = re.compile(r"[.!?](?=\s+(?![\sa-z]))")
_WEAK_CUT = re.compile(r"[,;:=](?=\s)")
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
        return _split_math(text)
    return _split_lines(text)


# ---------------------------------------------------------------- gsm8k / arithmetic


def _line_cuts(text: str, lo: int, hi: int, protected: Sequence[Span] = ()) -> list[int]:
    """Positions right after each run of newlines in text[lo:hi], outside ``protected``."""
    cuts = []
    for m in re.finditer(r"\n+", text[lo:hi]):
        pos = lo + m.end()
        if pos < len(text) and not _inside(pos, protected):
            cuts.append(pos)
    return cuts


def _split_lines(text: str) -> list[Span]:
    # 1) a cut after every newline run; 2) the '#### answer' line joins the step before it
    cuts = [c for c in _line_cuts(text, 0, len(text)) if not _ANSWER_LINE.match(text, c)]
    spans = _spans_from_cuts(text, cuts)
    # 3) blank-only parts join their neighbour
    return _merge_small(text, spans, min_chars=1)


# ---------------------------------------------------------------- math


def math_regions(text: str) -> list[Span]:
    """Spans of math (and [asy]) regions in ``text``, in order; no cut may fall inside one.

    A region runs from its opening delimiter to the end of its closing one; an unclosed
    opener runs to the end of the text. ``\\$`` is an escaped dollar, not a delimiter.
    """
    regions: list[Span] = []
    i, n = 0, len(text)
    while i < n:
        end = _region_end(text, i)
        if end is None:
            i += 2 if text.startswith("\\$", i) else 1
            continue
        regions.append((i, end))
        i = end
    return regions


def _region_end(text: str, i: int) -> int | None:
    """If a math region opens at ``i``, the index just after it closes; else None."""
    n = len(text)
    if text.startswith("$$", i):
        return _find_close(text, "$$", i + 2)
    if text.startswith("$", i):
        j = i + 1
        while j < n:
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == "$":
                return j + 1
            j += 1
        return n
    if text.startswith("\\(", i):
        return _find_close(text, "\\)", i + 2)
    if text.startswith("\\[", i):
        return _find_close(text, "\\]", i + 2)
    if text.startswith("[asy]", i):
        return _find_close(text, "[/asy]", i + 5)
    m = _BEGIN.match(text, i)
    if m:
        return _matching_end(text, m.group(1), m.end())
    return None


def _find_close(text: str, closer: str, start: int) -> int:
    j = text.find(closer, start)
    return len(text) if j < 0 else j + len(closer)


def _matching_end(text: str, name: str, start: int) -> int:
    """Index after the ``\\end{name}`` that closes a ``\\begin{name}`` (same-name nesting)."""
    opener, closer = "\\begin{" + name + "}", "\\end{" + name + "}"
    depth, j = 1, start
    while depth:
        nxt_close = text.find(closer, j)
        if nxt_close < 0:
            return len(text)
        nxt_open = text.find(opener, j)
        if 0 <= nxt_open < nxt_close:
            depth, j = depth + 1, nxt_open + len(opener)
        else:
            depth, j = depth - 1, nxt_close + len(closer)
    return j


def _inside(pos: int, regions: Sequence[Span]) -> bool:
    """True when ``pos`` lies strictly inside one of the sorted, disjoint ``regions``."""
    k = bisect.bisect_right(regions, (pos, sys.maxsize)) - 1
    return k >= 0 and regions[k][0] < pos < regions[k][1]


def _split_math(text: str) -> list[Span]:
    regions = math_regions(text)
    # 1) strong cuts: after newline runs and after sentence ends, outside math
    cuts = set(_line_cuts(text, 0, len(text), regions))
    cuts.update(m.end() for m in _SENTENCE_END.finditer(text) if not _inside(m.end(), regions))
    # a sentence that ends inside its math ("... = 3.$  Next") ends where the math closes
    cuts.update(
        e for s, e in regions if text[s:e].rstrip("$\\)] ").endswith(".") and _ws_at(text, e)
    )
    cuts = {c for c in cuts if 0 < c < len(text) and not _inside(c, regions)}
    spans = _spans_from_cuts(text, sorted(cuts))
    # 2) long parts: cut again at weaker boundaries
    spans = [piece for span in spans for piece in _split_long(text, span, regions)]
    # 3) tiny parts join their neighbour
    return _merge_small(text, spans, min_chars=MIN_STEP_CHARS)


def _ws_at(text: str, pos: int) -> bool:
    return pos < len(text) and text[pos].isspace()


def _split_long(text: str, span: Span, regions: Sequence[Span]) -> list[Span]:
    """Cut a part longer than MAX_STEP_CHARS at commas/'='/math ends, greedily."""
    start, end = span
    if end - start <= MAX_STEP_CHARS:
        return [span]
    weak = [start + m.end() for m in _WEAK_CUT.finditer(text, start, end)]
    weak += [e for s, e in regions if start < e < end and _ws_at(text, e)]
    cands = sorted({c for c in weak if start < c < end and not _inside(c, regions)})
    pieces, lo = [], start
    while end - lo > MAX_STEP_CHARS:
        ok = [c for c in cands if lo + MIN_STEP_CHARS <= c <= lo + MAX_STEP_CHARS]
        later = [c for c in cands if c > lo + MIN_STEP_CHARS]
        cut = ok[-1] if ok else (later[0] if later else None)
        if cut is None or end - cut < MIN_STEP_CHARS:
            break
        pieces.append((lo, cut))
        lo = cut
    pieces.append((lo, end))
    return pieces


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
