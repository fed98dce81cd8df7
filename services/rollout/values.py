"""Monte Carlo value estimation: V̂(s) = mean return of k continuations of state s.

For each state (prompt + partial response) the engine samples k continuations from the
current policy (all states in one ``continue_from`` call, so a shared prefix is computed
once); the grader scores ``partial + continuation`` against the gold answer.

Identical states (same prompt, partial, gold, dataset, token ids) are estimated once and
the estimate is copied to every occurrence.

Terminal rule — a state is graded directly (returns = [reward], terminal = True, no
sampling) when its partial response already holds a final answer:
  - gsm8k: a complete final-answer line, i.e. ``#### <something>`` followed by a newline;
  - math:  a closed ``\\boxed{...}`` (braces balanced);
  - any dataset: the partial ends with the engine's EOS text (e.g. ``</s>``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from services.rollout.engine.base import Engine, Prefix
from shared.schemas import GradeItem, SamplingParams, ValueEstimate, ValueItem, Verdict

_GSM8K_FINAL = re.compile(r"^####[ \t]*\S[^\n]*\n", re.MULTILINE)


class Grader(Protocol):
    """What grades responses: the reward service client, or anything with this method."""

    async def grade(self, items: Sequence[GradeItem]) -> list[Verdict]: ...


def has_closed_boxed(text: str) -> bool:
    """True when ``text`` holds ``\\boxed{`` ... with its matching ``}``."""
    start = text.find("\\boxed{")
    while start != -1:
        depth = 0
        for ch in text[start + len("\\boxed") :]:
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                return True
        start = text.find("\\boxed{", start + 1)
    return False


def is_terminal(partial: str, dataset: str, eos_text: str | None = None) -> bool:
    """The terminal rule of the module docstring."""
    if eos_text and partial.endswith(eos_text):
        return True
    if dataset == "gsm8k":
        return _GSM8K_FINAL.search(partial) is not None
    if dataset == "math":
        return has_closed_boxed(partial)
    return False


def _strip_eos(text: str, eos_text: str | None) -> str:
    return text[: -len(eos_text)] if eos_text and text.endswith(eos_text) else text


async def estimate_values(
    engine: Engine,
    grader: Grader,
    items: Sequence[ValueItem],
    k: int,
    sampling: SamplingParams,
    *,
    token_ids: Sequence[Sequence[int] | None] | None = None,
) -> list[ValueEstimate]:
    """One ValueEstimate per item (same order). ``token_ids[i]``, when given, is the exact
    tokenisation of ``items[i].prompt + items[i].partial_response`` to continue from."""
    if k < 1:
        raise ValueError("k must be >= 1")
    if token_ids is not None and len(token_ids) != len(items):
        raise ValueError("token_ids must have one entry per item")
    eos_text: str | None = getattr(engine, "eos_text", None)
    # 1) distinct states
    keys: list[tuple[object, ...]] = []
    index: dict[tuple[object, ...], int] = {}
    owner: list[int] = []
    first: list[int] = []
    for i, it in enumerate(items):
        ids = None if token_ids is None or token_ids[i] is None else tuple(token_ids[i] or ())
        key = (it.prompt, it.partial_response, it.gold, it.dataset, ids)
        owner.append(index.setdefault(key, len(keys)))
        if owner[-1] == len(keys):
            keys.append(key)
            first.append(i)
    distinct = [items[i] for i in first]
    distinct_ids = [key[4] for key in keys]
    # 2) sample k continuations of every non-terminal state in one engine call
    terminal = [is_terminal(it.partial_response, it.dataset, eos_text) for it in distinct]
    todo = [d for d in range(len(distinct)) if not terminal[d]]
    prefixes = [
        Prefix(distinct[d].prompt, distinct[d].partial_response, distinct_ids[d])  # type: ignore[arg-type]
        for d in todo
    ]
    samples = await engine.continue_from(prefixes, k, sampling) if prefixes else []
    # 3) grade partial + continuation (or the terminal partial itself) in one grader call
    grade_items: list[GradeItem] = []
    spans: list[tuple[int, int]] = []
    per_state = dict(zip(todo, samples, strict=True))
    for d, it in enumerate(distinct):
        start = len(grade_items)
        responses = (
            [_strip_eos(it.partial_response, eos_text)]
            if terminal[d]
            else [it.partial_response + c.text for c in per_state[d]]
        )
        grade_items += [GradeItem(response=r, gold=it.gold, dataset=it.dataset) for r in responses]
        spans.append((start, len(grade_items)))
    verdicts = await grader.grade(grade_items)
    if len(verdicts) != len(grade_items):
        raise RuntimeError(f"grader returned {len(verdicts)} verdicts for {len(grade_items)}")
    # 4) value = mean return
    estimates = []
    for d, (a, b) in enumerate(spans):
        returns = [v.reward for v in verdicts[a:b]]
        estimates.append(
            ValueEstimate(
                value=sum(returns) / len(returns),
                returns=returns,
                verdicts=[v.status for v in verdicts[a:b]],
                num_tokens=sum(len(c.token_ids) for c in per_state.get(d, [])),
                terminal=terminal[d],
            )
        )
    return [estimates[o].model_copy(deep=True) for o in owner]
