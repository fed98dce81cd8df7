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

import hashlib
import math
import re
from collections.abc import Sequence
from typing import Protocol

from services.rollout.engine.base import Engine, Prefix
from services.rollout.policy import PolicyGate
from services.rollout.value_cache import ValueCache
from shared.schemas import (
    GradeItem,
    ReturnStatus,
    SamplingParams,
    ValueEstimate,
    ValueItem,
    Verdict,
)

FIRST_ROUND = 4
"""Draws per state in the first round of a target-SE request."""
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
    target_se: float | None = None,
) -> list[ValueEstimate]:
    """One ValueEstimate per item (same order). ``token_ids[i]``, when given, is the exact
    tokenisation of ``items[i].prompt + items[i].partial_response`` to continue from.
    ``sampling.max_tokens`` is the response budget; ``stream_offset`` is the position of
    ``items[0]`` in the caller's whole batch (see the module docstring). With a ``cache``
    (`ValueCache`), seeded states already estimated by this policy version are not sampled
    again. With ``target_se``, ``k`` is a ceiling: each state draws until its standard error
    is at most ``target_se`` (`_draw_to_target`; not cached)."""
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
    version = (engine.version, str(PolicyGate.of(engine).sha256))  # the policy, for the cache
    caching = cache is not None and sampling.seed is not None and target_se is None
    sampling_key = sampling.model_dump_json() if caching else ""
    cache_keys = (
        [(key, sampling_key, stream_offset + first[d]) for d, key in enumerate(keys)]
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
    # 3) sample and grade: k continuations of every state with room, in one engine call, or
    # with a target standard error in rounds that double each state's draws until it is met
    if target_se is None:
        draws = await _continue_and_grade(
            engine, grader, distinct, prefixes, list(prefixes), k, sampling, eos_text
        )
    else:
        draws = await _draw_to_target(
            engine, grader, distinct, prefixes, k, sampling, eos_text, target_se
        )
    # 4) grade each terminal partial as it is
    final = [d for d in range(len(distinct)) if terminal[d] and d not in hits]
    texts = [(distinct[d], _strip_eos(distinct[d].partial_response, eos_text)) for d in final]
    graded = dict(zip(final, await _grade(grader, texts), strict=True))
    # 5) value = mean return
    estimates = []
    for d in range(len(distinct)):
        if d in hits:
            estimates.append(hits[d])
            continue
        # a terminal partial's grade; out of budget: a truncated episode's 0, nothing sampled
        got = [(*graded[d], 0)] if terminal[d] else draws.get(d, [(0.0, "truncated", 0)])
        returns = [r for r, _, _ in got]
        estimates.append(
            ValueEstimate(
                value=sum(returns) / len(returns),
                returns=returns,
                verdicts=[v for _, v, _ in got],
                num_tokens=sum(t for _, _, t in got),
                terminal=terminal[d],
                out_of_budget=not terminal[d] and d not in draws,
            )
        )
        if caching:
            assert cache is not None
            cache.store(version, cache_keys[d], estimates[-1], [t for _, _, t in draws.get(d, [])])
    return [estimates[o].model_copy(deep=True) for o in owner]


Draw = tuple[float, ReturnStatus, int]  # (return, verdict, tokens sampled)


async def _grade(
    grader: Grader, pairs: Sequence[tuple[ValueItem, str]]
) -> list[tuple[float, ReturnStatus]]:
    """(reward, verdict) of each (state, response text), in one grader call."""
    items = [GradeItem(response=text, gold=it.gold, dataset=it.dataset) for it, text in pairs]
    verdicts = await grader.grade(items) if items else []
    if len(verdicts) != len(items):
        raise RuntimeError(f"grader returned {len(verdicts)} verdicts for {len(items)}")
    return [(v.reward, v.status) for v in verdicts]


async def _continue_and_grade(
    engine: Engine,
    grader: Grader,
    distinct: Sequence[ValueItem],
    prefixes: dict[int, Prefix],
    todo: list[int],
    n: int,
    sampling: SamplingParams,
    eos_text: str | None,
) -> dict[int, list[Draw]]:
    """``n`` continuations of each state in ``todo`` (one engine call), graded (one grader
    call); a continuation cut at its budget returns 0 ungraded (``truncated``)."""
    if not todo:
        return {}
    samples = await engine.continue_from([prefixes[d] for d in todo], n, sampling)
    pairs = [
        (distinct[d], distinct[d].partial_response + c.text)
        for d, comps in zip(todo, samples, strict=True)
        for c in comps
        if c.finish_reason == "stop"
    ]
    graded = iter(await _grade(grader, pairs))
    out: dict[int, list[Draw]] = {}
    for d, comps in zip(todo, samples, strict=True):
        out[d] = [
            (*next(graded), len(c.token_ids))
            if c.finish_reason == "stop"
            else (0.0, "truncated", len(c.token_ids))
            for c in comps
        ]
    return out


def standard_error(returns: Sequence[float]) -> float:
    """Agresti–Coull standard error of a 0/1 mean, p̃ = (Σr + 2)/(n + 4): unlike the plain
    √(p̂(1 − p̂)/n) it is not 0 after a few agreeing draws (3 of 3: 0.18, 9 of 9: 0.10)."""
    n = len(returns)
    p = (sum(returns) + 2) / (n + 4)
    return math.sqrt(p * (1 - p) / (n + 4))


def _round_sampling(sampling: SamplingParams, r: int) -> SamplingParams:
    """Round ``r`` of a target-SE request: round 0 the request's own streams, later rounds
    streams of a seed derived from (seed, r), so no draw repeats one of an earlier round."""
    if r == 0 or sampling.seed is None:
        return sampling
    digest = hashlib.blake2b(f"{sampling.seed}/round/{r}".encode(), digest_size=6).digest()
    return sampling.model_copy(update={"seed": int.from_bytes(digest, "big")})


async def _draw_to_target(
    engine: Engine,
    grader: Grader,
    distinct: Sequence[ValueItem],
    prefixes: dict[int, Prefix],
    k: int,
    sampling: SamplingParams,
    eos_text: str | None,
    target_se: float,
) -> dict[int, list[Draw]]:
    """Rounds of min(k, FIRST_ROUND) draws, then doubling each remaining state's total,
    until its `standard_error` is at most ``target_se`` or it has ``k`` draws. Stopping on
    the draws themselves biases the mean a little (docs/rollout.md, Target standard error)."""
    draws: dict[int, list[Draw]] = {d: [] for d in prefixes}
    todo, n, r = list(prefixes), min(k, FIRST_ROUND), 0
    while todo:
        got = await _continue_and_grade(
            engine, grader, distinct, prefixes, todo, n, _round_sampling(sampling, r), eos_text
        )
        for d in todo:
            draws[d].extend(got[d])
        todo = [
            d
            for d in todo
            if len(draws[d]) < k and standard_error([x for x, _, _ in draws[d]]) > target_se
        ]
        total = len(draws[todo[0]]) if todo else 0
        n, r = min(total, k - total), r + 1
    return draws
