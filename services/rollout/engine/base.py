"""The inference-engine interface every rollout backend implements (torch, vllm).

Inputs and outputs carry token ids and text, the log-probability of every sampled token
under the sampling distribution (the trainer's π_θk), and the finish reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shared.schemas import Completion, SamplingParams


@dataclass(frozen=True)
class Prefix:
    """A state to continue from: the prompt plus a partial response (text and/or token ids).

    ``token_ids`` (when given) must be the tokenisation of ``prompt + partial`` the trainer
    used, so continuations extend exactly the tokens the policy produced.

    ``max_tokens`` (when given) caps this prefix's continuations below
    ``SamplingParams.max_tokens`` (MC states get what is left of the response budget).

    ``stream`` keys the prefix's random streams: sample j draws from (seed, stream, j).
    ``None`` means its position in the call; callers that split a batch pass the global
    position, so samples never depend on how the batch was cut into requests.
    """

    prompt: str
    partial: str = ""
    token_ids: tuple[int, ...] | None = None
    max_tokens: int | None = None
    stream: int | None = None


@dataclass
class EngineStats:
    """Counters an engine reports (``GET /metrics``, heartbeats)."""

    requests: int = 0
    prompt_tokens: int = 0
    sampled_tokens: int = 0
    busy_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.sampled_tokens / self.busy_s if self.busy_s > 0 else 0.0


@runtime_checkable
class Engine(Protocol):
    """Async engine. ``version`` is the policy version currently loaded (0 = initial)."""

    @property
    def version(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    async def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams, *, stream_offset: int = 0
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt; result[i] belongs to prompts[i].

        Sample j of prompts[i] draws from the random stream (seed, stream_offset + i, j).
        """
        ...

    async def continue_from(
        self, prefixes: list[Prefix], k: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """``k`` continuations of each prefix (identical prefixes are computed once)."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids the engine conditions on for ``Prefix(text)`` (BOS included if added)."""
        ...

    def max_context(self) -> int:
        """Most tokens (prefix + sampled) one sequence may hold."""
        ...

    async def load_weights(self, version: int, path: Any) -> None:
        """Load policy ``version`` in place (no restart) from a trusted local safetensors
        directory (``str``) or from ``VerifiedWeights`` (shard bytes ``read_weights`` checked:
        what the HTTP push and the queue announcement paths pass)."""
        ...

    def stats(self) -> EngineStats: ...

    async def close(self) -> None: ...


class EngineBase:
    """What both engines (torch, vllm) share: the served version, the model's name, the
    tokenizer's view of text, the stats, and `generate` as `continue_from` with one prefix per
    prompt, `continue_from` checks ``k`` and encodes the prefixes. A subclass sets
    ``model_dir``, ``tokenizer``, ``_version``, ``_stats`` and implements `vocab_size` and
    `_continue` (the sampling itself)."""

    model_dir: Path
    tokenizer: Any
    _version: int
    _stats: EngineStats

    @property
    def version(self) -> int:
        return self._version

    @property
    def model_name(self) -> str:
        return self.model_dir.name

    @property
    def eos_text(self) -> str | None:
        """The EOS token as text (a partial ending with it is terminal)."""
        tok = getattr(self.tokenizer, "eos_token", None)
        return tok if isinstance(tok, str) and tok else None

    def tokenize(self, text: str) -> list[int]:
        """The tokenizer's ids for ``text`` (what ``encode(Prefix(text))`` continues from)."""
        return [int(t) for t in self.tokenizer(text)["input_ids"]]

    def stats(self) -> EngineStats:
        return self._stats

    async def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams, *, stream_offset: int = 0
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt: prompt i is continued as a prefix with random
        stream ``stream_offset + i``."""
        prefixes = [Prefix(prompt=p, stream=stream_offset + i) for i, p in enumerate(prompts)]
        return await self.continue_from(prefixes, n, sampling)

    async def continue_from(
        self, prefixes: list[Prefix], k: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """``k`` continuations of each prefix; result[i] belongs to prefixes[i]."""
        if k < 1:
            raise EngineInputError("k must be >= 1", "bad_k")
        ids = [self.encode(p) for p in prefixes]
        return await self._continue(prefixes, ids, k, sampling)

    def encode(self, prefix: Prefix) -> list[int]:
        """Token ids of a prefix (its own ``token_ids`` when given); checks the ids."""
        return prefix_ids(prefix, self.tokenize, self.vocab_size())

    def vocab_size(self) -> int:
        """How many token ids the model embeds (a prefix's ids must be below it)."""
        raise NotImplementedError

    async def _continue(
        self, prefixes: list[Prefix], ids: list[list[int]], k: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """`continue_from` after its checks: ``ids[i]`` are the token ids of ``prefixes[i]``."""
        raise NotImplementedError


class EngineInputError(ValueError):
    """A request the engine cannot serve as asked (prompt too long, empty prompt, ...).

    The API answers it with a 4xx; ``code`` is the machine-readable error code.
    """

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


class EngineDead(RuntimeError):
    """The engine can serve nothing more (vLLM's engine-core process died): a job it fails is
    not the job's fault, and the replica must be restarted (a worker leaves such a job for
    another replica and stops; the rollout process exits)."""


class WeightsError(ValueError):
    """A weights directory/file that cannot be loaded (not safetensors, wrong shapes, ...)."""


def row_budget(prefix: Prefix, sampling: SamplingParams) -> int:
    """Most tokens one continuation of ``prefix`` may sample (``EngineInputError`` if < 1)."""
    if prefix.max_tokens is None:
        return sampling.max_tokens
    if prefix.max_tokens < 1:
        raise EngineInputError(
            f"Prefix.max_tokens must be >= 1, got {prefix.max_tokens}", "bad_max_tokens"
        )
    return min(prefix.max_tokens, sampling.max_tokens)


def prefix_ids(prefix: Prefix, tokenize: Callable[[str], list[int]], vocab_size: int) -> list[int]:
    """Token ids an engine continues ``prefix`` from: its own ``token_ids`` when given, else
    the tokenisation of ``prompt + partial``. Empty or out-of-vocabulary ids are refused."""
    if prefix.token_ids is not None:
        ids = [int(t) for t in prefix.token_ids]
    else:
        ids = tokenize(prefix.prompt + prefix.partial)
    if not ids:
        raise EngineInputError("empty prompt: nothing to condition on", "empty_prompt")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise EngineInputError(f"token id out of range [0, {vocab_size})", "bad_token_ids")
    return ids


def check_context(ids: list[list[int]], budgets: list[int], max_context: int) -> None:
    """Refuse a prefix whose tokens plus its sampling budget exceed the model's context."""
    for x, max_tokens in zip(ids, budgets, strict=True):
        if len(x) + max_tokens > max_context:
            raise EngineInputError(
                f"prompt of {len(x)} tokens + max_tokens {max_tokens} exceeds the model's "
                f"context of {max_context} tokens; shorten the prompt or lower max_tokens",
                "prompt_too_long",
            )
