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

Budget rule — the value must measure what the reward measures, so a continuation gets only
what an episode through this state would have had (the authors' rule, plus the response
budget). With B = ``sampling.max_tokens`` (the response budget), P = tokens of the prompt,
L = tokens of prompt + partial (the exact ids continued from) and C = the model's context:

    budget = min(B − (L − P), C − L)

A continuation cut at its budget (``finish_reason != "stop"``) returns 0 without grading
(verdict ``truncated``), as a truncated episode is rewarded 0. A state with budget ≤ 0 has
no room to continue: returns = [0], ``out_of_budget = True``, nothing sampled, no error.

Random streams: the continuations of item i draw from (seed, ``stream_offset`` + i, j), where
i is the first occurrence of the state in ``items``; a caller that splits a batch passes
each part's offset in the whole batch, so no two parts share a stream.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from services.rollout.engine.base import Engine, Prefix
from services.rollout.value_cache import ValueCache
from shared.schemas import (
    GradeItem,
    ReturnStatus,
    SamplingParams,
    ValueEstimate,
    ValueItem,
    Verdict,
)

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


def continuation_budget(
    response_budget: int, prefix_len: int, prompt_len: int, context: int
) -> int:
    """Tokens a continuation may sample: min(B − (L − P), C − L) (module docstring).

    ``prefix_len`` L counts prompt + partial, ``prompt_len`` P the prompt alone; ≤ 0 means
    no room. A partial shorter than 0 tokens (a tokenizer merging across the boundary)
    counts as 0."""
    partial_len = max(0, prefix_len - prompt_len)
    return min(response_budget - partial_len, context - prefix_len)


async def estimate_values(
    engine: Engine,
    grader: Grader,
    items: Sequence[ValueItem],
    k: int,
    sampling: SamplingParams,
    *,
    token_ids: Sequence[Sequence[int] | None] | None = None,
    stream_offset: int = 0,
    cache: ValueCache | None = None,
) -> list[ValueEstimate]:
    """One ValueEstimate per item (same order). ``token_ids[i]``, when given, is the exact
    tokenisation of ``items[i].prompt + items[i].partial_response`` to continue from.
    ``sampling.max_tokens`` is the response budget; ``stream_offset`` is the position of
    ``items[0]`` in the caller's whole batch (see the module docstring). With a ``cache``
    (`ValueCache`), seeded states already estimated by this policy version are not sampled
    again."""
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
    given: list[tuple[int, ...] | None] = []
    for i, it in enumerate(items):
        ids = None if token_ids is None or token_ids[i] is None else tuple(token_ids[i] or ())
        key = (it.prompt, it.partial_response, it.gold, it.dataset, ids)
        owner.append(index.setdefault(key, len(keys)))
        if owner[-1] == len(keys):
            keys.append(key)
            first.append(i)
            given.append(ids)
    distinct = [items[i] for i in first]
    version = engine.version
    caching = cache is not None and sampling.seed is not None
    cache_keys = (
        [(key, sampling.model_dump_json(), stream_offset + first[d]) for d, key in enumerate(keys)]
        if caching
        else []
    )
    hits: dict[int, ValueEstimate] = {}
    for d, ck in enumerate(cache_keys):
        assert cache is not None
        if (est := cache.lookup(version, ck, k)) is not None:
            hits[d] = est
    # 2) terminal states are graded as they are; the others get their token budget
    terminal = [is_terminal(it.partial_response, it.dataset, eos_text) for it in distinct]
    prefixes: dict[int, Prefix] = {}  # state -> what to continue (budget >= 1)
    prompt_lens: dict[str, int] = {}
    for d, it in enumerate(distinct):
        if terminal[d] or d in hits:
            continue
        ids = given[d]
        if ids is None:
            ids = tuple(engine.tokenize(it.prompt + it.partial_response))
        if it.prompt not in prompt_lens:
            prompt_lens[it.prompt] = len(engine.tokenize(it.prompt))
        budget = continuation_budget(
            sampling.max_tokens, len(ids), prompt_lens[it.prompt], engine.max_context()
        )
        if budget >= 1:
            prefixes[d] = Prefix(
                it.prompt,
                it.partial_response,
                ids,
                max_tokens=budget,
                stream=stream_offset + first[d],
            )
    # 3) sample k continuations of every state with room, in one engine call
    todo = list(prefixes)
    samples = await engine.continue_from(list(prefixes.values()), k, sampling) if todo else []
    per_state = dict(zip(todo, samples, strict=True))
    # 4) grade partial + each finished continuation (or the terminal partial) in one call
    grade_items: list[GradeItem] = []
    where: list[list[int | None]] = []  # per state: grade index of each return, None = 0
    for d, it in enumerate(distinct):
        if d in hits:
            responses: list[str | None] = []
        elif terminal[d]:
            responses = [_strip_eos(it.partial_response, eos_text)]
        elif d in per_state:
            responses = [
                it.partial_response + c.text if c.finish_reason == "stop" else None
                for c in per_state[d]
            ]
        else:
            responses = [None]  # out of budget
        slots: list[int | None] = []
        for r in responses:
            slots.append(None if r is None else len(grade_items))
            if r is not None:
                grade_items.append(GradeItem(response=r, gold=it.gold, dataset=it.dataset))
        where.append(slots)
    verdicts = await grader.grade(grade_items) if grade_items else []
    if len(verdicts) != len(grade_items):
        raise RuntimeError(f"grader returned {len(verdicts)} verdicts for {len(grade_items)}")
    # 5) value = mean return
    estimates = []
    for d, slots in enumerate(where):
        if d in hits:
            estimates.append(hits[d])
            continue
        returns = [0.0 if g is None else verdicts[g].reward for g in slots]
        statuses: list[ReturnStatus] = [
            "truncated" if g is None else verdicts[g].status for g in slots
        ]
        estimates.append(
            ValueEstimate(
                value=sum(returns) / len(returns),
                returns=returns,
                verdicts=statuses,
                num_tokens=sum(len(c.token_ids) for c in per_state.get(d, [])),
                terminal=terminal[d],
                out_of_budget=not terminal[d] and d not in per_state,
            )
        )
        if caching:
            assert cache is not None
            tokens = [len(c.token_ids) for c in per_state.get(d, [])]
            cache.store(version, cache_keys[d], estimates[-1], tokens)
    return [estimates[o].model_copy(deep=True) for o in owner]
