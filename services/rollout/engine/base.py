"""The inference-engine interface every rollout backend implements (torch, vllm).

Inputs and outputs carry token ids and text, the log-probability of every sampled token
under the sampling distribution (the trainer's π_θk), and the finish reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from shared.schemas import Completion, SamplingParams


@dataclass(frozen=True)
class Prefix:
    """A state to continue from: the prompt plus a partial response (text and/or token ids).

    ``token_ids`` (when given) must be the tokenisation of ``prompt + partial`` the trainer
    used, so continuations extend exactly the tokens the policy produced.
    """

    prompt: str
    partial: str = ""
    token_ids: tuple[int, ...] | None = None


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
        self, prompts: list[str], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt; result[i] belongs to prompts[i]."""
        ...

    async def continue_from(
        self, prefixes: list[Prefix], k: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """``k`` continuations of each prefix (identical prefixes are computed once)."""
        ...

    async def load_weights(self, version: int, path: str) -> None:
        """Load policy ``version`` from a safetensors directory, in place (no restart)."""
        ...

    def stats(self) -> EngineStats: ...

    async def close(self) -> None: ...


class EngineInputError(ValueError):
    """A request the engine cannot serve as asked (prompt too long, empty prompt, ...).

    The API answers it with a 4xx; ``code`` is the machine-readable error code.
    """

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


class WeightsError(ValueError):
    """A weights directory/file that cannot be loaded (not safetensors, wrong shapes, ...)."""
