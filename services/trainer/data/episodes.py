"""From sampled completions to training tensors: episodes, step token ranges, padded batches.

An *episode* is one response to one prompt with its reward and its reasoning steps mapped to
token ranges. Tensors use the **action frame**: for a sequence ``prompt + response`` of length
L, position ``t`` of a (B, L−1) tensor is about predicting token ``t+1`` from tokens ``[:t+1]``.
Response token j (at sequence position P+j) is therefore action ``P+j−1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from shared.example import Example
from shared.schemas import Completion, Verdict
from shared.steps import char_offsets, split_steps, token_step_ranges


class GradingFailed(RuntimeError):
    """Every verdict of a batch is ``error``: the grader, not the policy, failed."""


def error_rate(verdicts: Sequence[Verdict]) -> float:
    """Share of verdicts whose status is ``error`` (0 for none)."""
    return sum(v.status == "error" for v in verdicts) / max(1, len(verdicts))


@dataclass
class Episode:
    """One sampled response with everything the estimators and losses need."""

    group: int
    """Which prompt of the iteration this answers (GRPO/RLOO groups, shared s_0)."""
    prompt: str
    example: Example
    prompt_ids: list[int]
    response_ids: list[int]
    response: str
    finish_reason: str
    reward: float
    """R ∈ {0, 1}; a length-truncated response gets 0 (the authors' rule)."""
    spans: list[tuple[int, int]] = field(default_factory=list)
    """Character spans of the reasoning steps of ``response``."""
    step_ranges: list[tuple[int, int]] = field(default_factory=list)
    """Token index ranges (within ``response_ids``) of each step."""


def build_episodes(
    examples: Sequence[Example],
    prompts: Sequence[str],
    completions: Sequence[Sequence[Completion]],
    verdicts: Sequence[Verdict],
    tokenizer: Any,
    step_rules: str,
) -> list[Episode]:
    """Flatten P prompts × n completions into episodes; ``verdicts`` is in the same flat order.

    A batch whose every verdict is ``error`` (the grader itself failed, e.g. its workers keep
    dying) raises `GradingFailed` instead of training on all-zero rewards."""
    episodes: list[Episode] = []
    flat = [(g, c) for g, per in enumerate(completions) for c in per]
    if len(flat) != len(verdicts):
        raise ValueError(f"{len(flat)} completions but {len(verdicts)} verdicts")
    if verdicts and all(v.status == "error" for v in verdicts):
        raise GradingFailed(
            f"the grader returned 'error' for all {len(verdicts)} responses "
            f"(first: {verdicts[0].detail or 'no detail'}); refusing to train on zero rewards"
        )
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    for (g, c), v in zip(flat, verdicts, strict=True):
        reward = v.reward if c.finish_reason == "stop" else 0.0
        spans = split_steps(c.text, step_rules) or [(0, 0)]
        ranges = token_step_ranges(spans, char_offsets(c.token_ids, decode), len(c.token_ids))
        episodes.append(
            Episode(
                group=g,
                prompt=prompts[g],
                example=examples[g],
                prompt_ids=prompt_ids[g],
                response_ids=list(c.token_ids),
                response=c.text,
                finish_reason=c.finish_reason,
                reward=float(reward),
                spans=spans,
                step_ranges=ranges,
            )
        )
    return episodes


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt token ids exactly as the rollout engines encode them (special tokens included)."""
    return list(tokenizer(prompt)["input_ids"])


@dataclass
class Batch:
    """Padded tensors of a list of episodes, in the action frame (see module docstring)."""

    input_ids: Tensor  # (B, L) prompt + response, right-padded
    attention_mask: Tensor  # (B, L)
    response_mask: Tensor  # (B, L-1) 1 where the action is a response token
    step_ids: Tensor  # (B, L-1) reasoning-step index of each response action, -1 elsewhere
    rewards: Tensor  # (B,)
    group_ids: Tensor  # (B,)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def select(self, idx: Tensor) -> Batch:
        return Batch(**{k: v[idx] for k, v in self.__dict__.items()})

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def collate(episodes: Sequence[Episode], pad_id: int) -> Batch:
    """Right-pad prompt+response sequences and build the masks and step ids."""
    lengths = [len(e.prompt_ids) + len(e.response_ids) for e in episodes]
    b, width = len(episodes), max(lengths)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    response_mask = torch.zeros((b, width - 1), dtype=torch.float32)
    step_ids = torch.full((b, width - 1), -1, dtype=torch.long)
    for row, e in enumerate(episodes):
        p, r = len(e.prompt_ids), len(e.response_ids)
        input_ids[row, : p + r] = torch.tensor(e.prompt_ids + e.response_ids, dtype=torch.long)
        attention[row, : p + r] = 1
        response_mask[row, p - 1 : p + r - 1] = 1.0
        for step, (lo, hi) in enumerate(e.step_ranges):
            step_ids[row, p - 1 + lo : p - 1 + hi] = step
    rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    groups = torch.tensor([e.group for e in episodes], dtype=torch.long)
    return Batch(input_ids, attention, response_mask, step_ids, rewards, groups)
