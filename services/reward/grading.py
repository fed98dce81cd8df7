"""Pure answer extraction and grading for GSM8K and MATH (no I/O, no processes).

``grade(response, gold, dataset)`` returns a ``Verdict``. GSM8K answers are compared as exact
numbers (no sympy); MATH answers by normalised string equality first, then through
math-verify / latex2sympy2_extended wrapped with rules for its known failures (interval
brackets, multi-answer sets, percent, tiny-number rounding, word answers). Model text is only
ever parsed by the LaTeX grammar, never ``eval``-ed; answers over the size caps in
``Limits`` skip symbolic work. Run this inside a sandbox worker (``sandbox.GraderPool``).
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any

from services.reward import textnorm
from services.reward.limits import DEFAULT_LIMITS, Limits, over_limits
from services.reward.textnorm import GSM_NUMBER, clean_text, last_boxed, normalize_math
from shared.schemas import Verdict

logging.getLogger("math_verify").setLevel(logging.ERROR)


GSM_REL_TOL = 1e-6
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*", re.IGNORECASE)
_LATEX_SPAN = re.compile(r"^\$([^$]{1,400})\$|^\\\((.{1,400}?)\\\)|^\\\[(.{1,400}?)\\\]")


# ----------------------------------------------------------------------------- extraction
def extract_answer(text: str, dataset: str, *, fallbacks: bool = True) -> str | None:
    """The final answer in ``text`` (GSM8K: after the last ``####``; MATH: last box), or None."""
    text = clean_text(text)
    if dataset == "gsm8k":
        return _extract_gsm8k(text, fallbacks)
    if dataset == "math":
        return _extract_math(text, fallbacks)
    raise ValueError(f"unknown dataset {dataset!r}; expected 'gsm8k' or 'math'")


def _extract_gsm8k(text: str, fallbacks: bool) -> str | None:
    # 1) the GSM8K format: everything after the last '####' on its line
    pos = text.rfind("####")
    if pos >= 0:
        line = text[pos + 4 :].strip().split("\n", 1)[0].strip()
        if GSM_NUMBER.search(line):
            return line
        if not fallbacks:
            return None
    if not fallbacks:
        return None
    # 2) "The answer is X"
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        tail = text[m.end() : m.end() + 200].split("\n", 1)[0]
        if GSM_NUMBER.search(tail):
            return tail.strip()
    # 3) a boxed answer, 4) the last number in the text
    boxed = last_boxed(text)
    if boxed is not None and GSM_NUMBER.search(boxed):
        return boxed
    numbers = GSM_NUMBER.findall(text[-10_000:])
    return numbers[-1] if numbers else None


def _extract_math(text: str, fallbacks: bool) -> str | None:
    # 1) the last \boxed{...} / \fbox{...} / \boxed 5
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    if not fallbacks:
        return None
    # 2) "The (final) answer is $X$" / "answer is X"
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        tail = text[m.end() : m.end() + 400]
        span = _LATEX_SPAN.match(tail)
        if span:
            return next(g for g in span.groups() if g is not None).strip() or None
        word = tail.split("\n", 1)[0].strip().rstrip(".").strip()
        if word and len(word) <= 100:
            return word
    return None


def _gold_answer(gold: str, dataset: str) -> str | None:
    """The gold answer: a bare answer, or the answer a full gold solution ends with."""
    gold = clean_text(gold)
    if dataset == "gsm8k":
        if "####" in gold:
            return _extract_gsm8k(gold, fallbacks=False)
        return gold.strip() or None
    if "\\boxed" in gold or "\\fbox" in gold:
        return _extract_math(gold, fallbacks=False)
    return gold.strip() or None


# ----------------------------------------------------------------------------- verdicts
def _verdict(
    status: str,
    extracted: str | None,
    norm: str | None,
    gold_norm: str | None,
    detail: str | None = None,
) -> Verdict:
    return Verdict.model_construct(
        schema_version=1,
        status=status,
        reward=1.0 if status == "correct" else 0.0,
        extracted=extracted,
        normalized=norm,
        gold_normalized=gold_norm,
        detail=detail,
    )


def grade(
    response: str,
    gold: str,
    dataset: str,
    *,
    fallbacks: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> Verdict:
    """Grade one response against one gold answer or gold solution."""
    if dataset not in ("gsm8k", "math"):
        return _verdict("error", None, None, None, f"unknown dataset {dataset!r}")
    gold_ans = _gold_answer(gold, dataset)
    if dataset == "gsm8k":
        return _grade_gsm8k(response, gold_ans, fallbacks)
    return _grade_math(response, gold_ans, fallbacks, limits)


def _grade_gsm8k(response: str, gold_ans: str | None, fallbacks: bool) -> Verdict:
    gold_num = textnorm.parse_gsm_number(gold_ans) if gold_ans is not None else None
    gold_norm = textnorm.format_number(gold_num) if gold_num is not None else None
    if gold_num is None:
        return _verdict("bad_gold", None, None, None, f"no number in gold {gold_ans!r:.80}")
    extracted = extract_answer(response, "gsm8k", fallbacks=fallbacks)
    num = textnorm.parse_gsm_number(extracted) if extracted is not None else None
    if num is None:
        return _verdict("no_answer", extracted, None, gold_norm)
    norm = textnorm.format_number(num)
    ok = gsm8k_equal(num, gold_num)
    return _verdict("correct" if ok else "incorrect", extracted, norm, gold_norm)


def gsm8k_equal(a: Fraction | str, b: Fraction | str) -> bool:
    """Exact equality for integers, relative tolerance ``GSM_REL_TOL`` for decimals."""
    if isinstance(a, str) or isinstance(b, str):  # over the digit cap: compare the digits
        return a == b
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return abs(a - b) <= GSM_REL_TOL * max(abs(a), abs(b))


def _grade_math(response: str, gold_ans: str | None, fallbacks: bool, limits: Limits) -> Verdict:
    if gold_ans is None:
        return _verdict("bad_gold", None, None, None, "no answer in gold")
    gold_norm = normalize_math(gold_ans)
    if not gold_norm:
        return _verdict("bad_gold", None, None, None, "gold answer is empty")
    extracted = extract_answer(response, "math", fallbacks=fallbacks)
    if extracted is None:
        return _verdict("no_answer", None, None, gold_norm)
    norm = normalize_math(extracted)
    if not norm:
        return _verdict("no_answer", extracted, None, gold_norm)
    ok, detail = math_equal(norm, gold_norm, limits)
    return _verdict("correct" if ok else "incorrect", extracted, norm, gold_norm, detail)


# ----------------------------------------------------------------------------- MATH rules
def math_equal(pred: str, gold: str, limits: Limits = DEFAULT_LIMITS) -> tuple[bool, str | None]:
    """Normalised answers equal? Returns (equal, detail) — detail says why a check was skipped."""
    # 1) normalised string equality (the fast path)
    if pred == gold:
        return True, None
    # 2) multi-answer sets must match as sets, element by element
    gold_parts, pred_parts = textnorm.split_answers(gold), textnorm.split_answers(pred)
    if len(gold_parts) != len(pred_parts):
        return False, None
    if len(gold_parts) > 1:
        return _match_sets(pred_parts, gold_parts, limits)
    return _single_equal(pred, gold, limits)


def _match_sets(
    pred_parts: list[str], gold_parts: list[str], limits: Limits
) -> tuple[bool, str | None]:
    unused = list(pred_parts)
    for g in gold_parts:
        hit = next((p for p in unused if _single_equal(p, g, limits)[0]), None)
        if hit is None:
            return False, None
        unused.remove(hit)
    return True, None


def _single_equal(pred: str, gold: str, limits: Limits) -> tuple[bool, str | None]:
    if pred == gold:
        return True, None
    # 1) word answers ("Evelyn", "\text{odd}") compare as words, never as symbol products
    pw, gw = textnorm.as_word(pred), textnorm.as_word(gold)
    if pw is not None or gw is not None:
        return pw is not None and pw == gw, None
    # 2) interval / tuple bracket types must match
    pb, gb = textnorm.bracket_signature(pred), textnorm.bracket_signature(gold)
    if pb is not None and gb is not None and pb != gb:
        return False, None
    # 3) plain numbers (most MATH answers) compare exactly, without sympy
    pn, gn = textnorm.plain_number(pred), textnorm.plain_number(gold)
    if pn is not None and gn is not None:
        return pn == gn, None
    # 4) different kinds of object (number vs interval, matrix, polynomial in x) never agree
    pk, gk = textnorm.answer_kind(pred), textnorm.answer_kind(gold)
    if pk != gk and ("expr" not in (pk, gk) or {"interval", "matrix"} & {pk, gk}):
        return False, None
    # 5) size caps before any symbolic work
    for s in (pred, gold):
        reason = over_limits(s, limits)
        if reason is not None:
            return False, f"symbolic check skipped: {reason}"
    return _symbolic_within(pred, gold, limits.symbolic_cpu_s)


class _OverBudget(Exception):
    pass


def _over_budget(signum: int, frame: Any) -> None:
    raise _OverBudget


def _symbolic_within(pred: str, gold: str, budget: float | None) -> tuple[bool, str | None]:
    """``_symbolic_equal`` stopped after ``budget`` CPU seconds (``ITIMER_PROF``: CPU time, so
    a busy machine does not shorten it). Python-level work only: C-level big-integer
    arithmetic cannot be interrupted (the sandbox's wall-clock kill stays the hard stop)."""
    if budget is None or threading.current_thread() is not threading.main_thread():
        return _symbolic_equal(pred, gold), None
    previous = signal.signal(signal.SIGPROF, _over_budget)
    try:
        try:
            signal.setitimer(signal.ITIMER_PROF, budget)
            equal = _symbolic_equal(pred, gold)
        finally:  # disarmed before anything else: a late signal still lands in the except
            signal.setitimer(signal.ITIMER_PROF, 0)
    except _OverBudget:
        return False, f"symbolic check skipped: over its {budget:g} s CPU budget"
    finally:
        signal.signal(signal.SIGPROF, previous)
    return equal, None


@lru_cache(maxsize=4096)
def _parse(latex: str) -> tuple[Any, ...]:
    from math_verify import LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0)]
    return tuple(parse(f"${latex}$", extraction_config=config, parsing_timeout=None))


def _symbolic_equal(pred: str, gold: str) -> bool:
    from math_verify import verify

    g, p = list(_parse(gold)), list(_parse(pred))
    if not g or not p:
        return False
    if _numbers_far_apart(g[0], p[0]):  # cheap exit before verify's many strategies
        return False
    if not verify(g, p, timeout_seconds=None):
        return False
    return _numbers_agree(g[0], p[0])


def _numbers_far_apart(a: Any, b: Any) -> bool:
    """Two constants that differ by more than 1e-6 both absolutely and relatively."""
    import sympy

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if not (a.is_number and b.is_number):
        return False
    try:
        av, bv = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
    except (TypeError, ValueError, ArithmeticError, OverflowError):
        return False
    diff = abs(av - bv)
    return diff > 1e-6 and diff > 1e-6 * max(abs(av), abs(bv))


def _numbers_agree(a: Any, b: Any) -> bool:
    """math-verify rounds to 6 places, so 1/2^99 == 1/2^98; re-check numbers exactly."""
    import sympy

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return True
    if not (a.is_number and b.is_number) or a.has(sympy.Float) or b.has(sympy.Float):
        return True
    if a.is_Rational and b.is_Rational:
        return bool(a == b)
    try:
        av, bv = sympy.N(a, 50), sympy.N(b, 50)
        return bool(abs(av - bv) <= sympy.Float("1e-30", 50) * max(abs(av), abs(bv)))
    except (TypeError, ValueError, ArithmeticError):
        return True
