"""String-level helpers for the grader: cleaning, box extraction, normalisation (pure, no I/O).

Everything here is linear-time in the input (a 1 MB response or 50,000 nested braces is fine)
and never parses math beyond counting brackets.
"""

from __future__ import annotations

import re
from fractions import Fraction

GSM_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?(?:/\d+)?")
"""A GSM8K number: ``1,234.5``, ``.5``, ``3/4``, and scientific notation (``7e3`` is 7000,
never 7 with a suffix)."""
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_BOX_CMDS = ("\\boxed", "\\fbox")


def clean_text(text: str) -> str:
    """Drop NUL bytes and lone surrogates (invalid UTF-8 arrives as those)."""
    if text.isascii():
        return text.replace("\x00", "") if "\x00" in text else text
    return _SURROGATES.sub("\ufffd", text.replace("\x00", ""))


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` (brace-matched) or ``\\boxed 5``."""
    pos = max(text.rfind(cmd) for cmd in _BOX_CMDS)
    while pos >= 0:
        cmd = "\\boxed" if text.startswith("\\boxed", pos) else "\\fbox"
        start = pos + len(cmd)
        body = _box_body(text, start)
        if body is not None:
            return body
        pos = max(text.rfind(c, 0, pos) for c in _BOX_CMDS)
    return None


def _box_body(text: str, start: int) -> str | None:
    if start < len(text) and text[start] == "{":
        depth = 0
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{" and text[i - 1] != "\\":
                depth += 1
            elif ch == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[start + 1 : i]
        return None  # unbalanced
    if start < len(text) and text[start] == " ":
        m = re.match(r" +([^\s$]+)", text[start : start + 200])
        return m.group(1) if m else None
    return None


# ----------------------------------------------------------------------------- GSM8K numbers
_EXPONENT = re.compile(r"[eE]([+-]?\d+)")


def parse_gsm_number(s: str, max_digits: int = 100) -> Fraction | str | None:
    """First number in ``s`` ("$1,234.50", "-3", "3/4", "7e3"), exact; a str if over
    ``max_digits`` digits or with an exponent beyond ±``max_digits`` (never expanded)."""
    m = GSM_NUMBER.search(s)
    if m is None:
        return None
    raw = m.group(0).replace(",", "").rstrip(".")
    exponent = _EXPONENT.search(raw)
    if exponent is not None and abs(int(exponent.group(1))) > max_digits:
        return raw.lower()
    if sum(ch.isdigit() for ch in raw) > max_digits:
        return raw
    num, _, den = raw.partition("/")
    try:
        return Fraction(num) / Fraction(den) if den else Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None


def format_number(x: Fraction | str) -> str:
    """Canonical text of a GSM8K number: ``18``, ``-3.5``, ``3/7``."""
    if isinstance(x, str):
        return x
    if x.denominator == 1:
        return str(x.numerator)
    d = x.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # terminating decimal
        return f"{float(x):.12g}" if abs(x) < 1e15 else str(x)
    return str(x)


# ----------------------------------------------------------------------------- MATH strings
_REMOVE = ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\$", "$", "~")
_LATEX_SPACE = re.compile(r"(?<!\\)\\ ")
_REPLACE = (
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("\\dbinom", "\\binom"),
    ("\\tbinom", "\\binom"),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("°", ""),
    ("\\le ", "\\leq "),
    ("\\ge ", "\\geq "),
)
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox|textnormal)\{([^{}]*)\}")
_UNIT_AFTER_NUMBER = re.compile(
    r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]+\}(?:\^\{?\d\}?)?$"
)
_VAR_EQ = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in\b)\s*(?=[^=]+$)")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF = re.compile(r"\\frac\{([^{}]+)\}(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt(\d)")
_AND = re.compile(r"\\text\{\s*and\s*\}|\s+and\s+|;")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def normalize_math(s: str) -> str:
    """Canonical string of a MATH answer: spacing, ``\\dfrac``, units, ``x = 3`` removed."""
    s = _AND.sub(",", s.strip())
    s = _UNIT_AFTER_NUMBER.sub("", s)
    s = _LATEX_SPACE.sub("", s)
    for old in _REMOVE:
        s = s.replace(old, "")
    for old, new in _REPLACE:
        s = s.replace(old, new)
    s = s.replace("\\%", "%").replace("%", "\\%")
    if _TEXT.fullmatch(s.strip()):  # the whole answer is text: unwrap it
        s = _TEXT.fullmatch(s.strip()).group(1)  # type: ignore[union-attr]
    s = _VAR_EQ.sub("", s.strip())
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = "".join(s.split())
    s = s.rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if s.startswith("."):
        s = "0" + s
    if s.startswith("\\{") and s.endswith("\\}"):  # a set written with braces
        s = s[2:-2]
    return unwrap_groups(s) if len(s) <= MAX_UNWRAP_CHARS else s


MAX_UNWRAP_CHARS = 4096
"""Longer answers are never parsed symbolically (``Limits.max_answer_chars``): left as they are."""
_OPENERS = {"{": "}", "(": ")"}
_NOT_AN_ARGUMENT = set("({[,=+-*/<>|;:")  # a '{' after one of these is a bare group


def _group_pairs(s: str) -> dict[int, int] | None:
    """Opening index -> closing index of every ``{}``/``()`` pair (``\\{`` is a literal);
    None when they do not balance."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(s):
        if i and s[i - 1] == "\\":
            continue
        if ch in _OPENERS:
            stack.append(i)
        elif ch in "})":
            if not stack or _OPENERS[s[stack[-1]]] != ch:
                return None
            pairs[stack.pop()] = i
    return pairs if not stack else None


def unwrap_groups(s: str) -> str:
    """Drop redundant grouping: ``{{X}}`` -> ``{X}``, ``((X))`` -> ``(X)``, ``({X})`` ->
    ``(X)``, a bare ``{(X)}`` -> ``(X)`` (never a command's argument: ``\\frac{(a)}{b}`` keeps
    its braces), then a whole answer ``{X}`` -> ``X`` and ``(X)`` -> ``X`` (not a tuple).

    A correct answer wrapped 30 deep is the answer again, and no parser sees the nesting
    (the LaTeX parser's time grows with it). Linear: one pass over the groups, innermost
    first, then at most a few passes for the whole answer."""
    found = _group_pairs(s)
    if not found:
        return s
    pairs: dict[int, int] = found
    removed: set[int] = set()
    inner: dict[int, int | None] = {}  # group -> the one group its content is (after removals)
    for i in sorted(pairs, key=lambda k: pairs[k] - k):  # a child is shorter than its parent
        j = i + 1
        child = None if pairs.get(j) != pairs[i] - 1 else (inner[j] if j in removed else j)
        while child is not None and (s[i], s[child]) in _REDUNDANT:
            removed.add(child)
            child = inner[child]
        inner[i] = child
        if s[i] == "{" and child is not None and s[child] == "(" and _bare(s, i):
            removed.add(i)
    drop = removed | {pairs[i] for i in removed}
    out = "".join(ch for k, ch in enumerate(s) if k not in drop)
    for _ in range(3):  # the whole answer in one group: {X} -> X, (X) -> X unless a tuple
        pairs = _group_pairs(out) or {}
        if pairs.get(0) != len(out) - 1 or (out[0] == "(" and _top_level_comma(out[1:-1])):
            break
        out = out[1:-1]
    return out


_REDUNDANT = {("(", "("), ("{", "{"), ("(", "{")}


def _bare(s: str, i: int) -> bool:
    """The ``{`` at ``i`` opens a bare group, not an argument (``\\frac{``, ``^{``, ``}{``)."""
    return i == 0 or s[i - 1] in _NOT_AN_ARGUMENT


def _top_level_comma(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch in "({[") - (ch in ")}]")
        if ch == "," and depth == 0:
            return True
    return False


def split_answers(s: str) -> list[str]:
    """Top-level parts of a multi-answer ``1,2`` / ``1331 and 1728`` (never inside brackets)."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (q.strip() for q in parts) if p]


_WORD = re.compile(r"^(?:\\text\{)?([A-Za-z][A-Za-z ]{1,})\}?$")


def as_word(s: str) -> str | None:
    """Lower-cased word answer ("Evelyn", "\\text{odd}"), or None if ``s`` is not one."""
    m = _WORD.match(s)
    if m is None:
        return None
    word = m.group(1).strip().lower()
    return word if len(word) >= 2 and not re.fullmatch(r"[a-z]{1,2}", word) else None


def bracket_signature(s: str) -> str | None:
    """Outer bracket characters of an interval/tuple (union), e.g. ``[)`` for ``[1,2)``."""
    if not s or s[0] not in "([" or s[-1] not in ")]":
        return None
    sig, depth = [], 0
    for ch in s:
        if ch in "([":
            if depth == 0:
                sig.append(ch)
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth == 0:
                sig.append(ch)
    return "".join(sig) if depth == 0 and "," in s else None


def brace_depth(s: str) -> int:
    """Deepest nesting of ``{`` / ``(`` / ``[`` in ``s``."""
    depth = best = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            best = max(best, depth)
        elif ch in "})]":
            depth -= 1
    return best


def nested_power(s: str) -> bool:
    """True for a power inside an exponent (``2^{2^{2}}``, ``2^2^2``): a power tower."""
    i = s.find("^")
    while i >= 0:
        j = i + 1
        while j < len(s) and s[j] == " ":
            j += 1
        if j < len(s) and s[j] == "{":
            depth, k = 0, j
            while k < len(s):
                depth += (s[k] == "{") - (s[k] == "}")
                if depth == 0:
                    break
                k += 1
            if "^" in s[j:k]:
                return True
        else:
            k = j
            while k < len(s) and (s[k].isalnum()):
                k += 1
            if k < len(s) and s[k] == "^":
                return True
        i = s.find("^", i + 1)
    return False


_PLAIN = re.compile(r"(-?)(?:(\d+(?:\.\d+)?|\.\d+)|\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))")


def plain_number(s: str, max_digits: int = 50) -> Fraction | None:
    """Exact value of a plain number (``-12``, ``0.25``, ``\\frac{3}{4}``, ``3/4``), else None."""
    if len(s) > max_digits:
        return None
    m = _PLAIN.fullmatch(s)
    if m is None:
        return None
    sign, dec, fn, fd, sn, sd = m.groups()
    num, den = (dec, "1") if dec is not None else ((fn, fd) if fn is not None else (sn, sd))
    if int(den) == 0:
        return None
    value = Fraction(num) / Fraction(den)
    return -value if sign else value


_COMMAND = re.compile(r"\\[a-zA-Z]+")
_VARIABLE = re.compile(r"[a-hj-zA-Z]")  # any letter but the imaginary unit i


def answer_kind(s: str) -> str:
    """Coarse type of a normalised answer: number, interval, matrix, variable or expr."""
    if plain_number(s) is not None:
        return "number"
    if bracket_signature(s) is not None:
        return "interval"
    if "\\begin{" in s:
        return "matrix"
    if _VARIABLE.search(_COMMAND.sub("", s)) and "=" not in s:
        return "variable"  # an expression with a free variable, e.g. x^2+1
    return "expr"
