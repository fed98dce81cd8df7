"""Sampling side of the value analysis: trajectories, ground truth and each method's estimate.

Through the rollout queue (policy version ``version``) and the reward service:
1) sample ``responses`` trajectories per held-out prompt and grade them;
2) cut each into reasoning steps; every step-boundary state s_i (s_0 = the prompt) is a record;
3) ground truth V(s) = mean of ``truth_k`` MC returns; VinePPO's estimate = an independent
   MC mean of ``vine_k`` returns; the PPO critic's V(s) at the state's last token (when a
   critic is given, unclamped); GRPO's / RLOO's shared baseline of the response's group,
   leave-one-out (the mean reward of the *other* responses to the prompt); VinePPO with
   ``vine.reuse_returns``: the baseline that pools the first k_u of VinePPO's MC returns with
   the other responses' returns through the state (`pooled_state_values`; no extra sampling),
   and each estimate's MC cost (``mc_cost``: continuations and tokens);
4) top-action identification: at up to ``top_action_states`` non-terminal states sample
   ``candidates`` next steps, and score every child state with each method and the truth.
Returns JSON-ready ``records`` for ``analysis.summarize`` and ``analysis.plot_analysis``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from services.trainer.algos.states import mc_budget, plan_states, pooled_state_values
from services.trainer.client.jobs import JobOptions, run_generate_jobs, run_value_jobs
from services.trainer.data.episodes import build_episodes
from services.trainer.evaluation.analysis import GROUP_BASELINE, group_baseline
from shared.example import Example
from shared.schemas import GradeItem, SamplingParams, ValueItem
from shared.steps import split_steps

State = tuple[str, str]  # (prompt, partial response)


@dataclass
class ProbeConfig:
    responses: int = 4
    """Trajectories sampled per prompt (the GRPO/RLOO group; >= 2 for its leave-one-out
    baseline)."""
    truth_k: int = 256
    """MC continuations of the ground-truth value (paper: 256)."""
    vine_k: int = 9
    """VinePPO's K (the run's ``vine.k``); 0 = no VinePPO estimate."""
    temperature: float = 0.6
    """Sampling temperature of trajectories, continuations and candidate steps."""
    top_p: float = 1.0
    """Nucleus threshold of the same samples (the run's ``rollout.top_p``)."""
    max_tokens: int = 1024
    """Longest response / continuation."""
    top_action_states: int = 8
    """States at which candidate next steps are sampled (0 = skip top-action)."""
    candidates: int = 5
    """Candidate next steps per state (paper: 5)."""
    step_rules: str = "gsm8k"
    """Step segmentation rules: gsm8k (also arithmetic) | math."""
    seed: int = 0
    job_size: int = 16
    progress: bool = True


def first_step(text: str, finished: bool, rules: str, eos_text: str) -> str:
    """The first reasoning step of a continuation; a one-step (final) continuation that ended
    by itself gets the EOS text so the child state counts as terminal."""
    spans = split_steps(text, rules)
    if len(spans) > 1:
        return text[: spans[0][1]]
    return text + eos_text if finished else text


@torch.no_grad()
def critic_state_values(
    critic: Any, tokenizer: Any, states: Sequence[State], micro: int = 8
) -> list[float]:
    """V(s) of the PPO critic at the last token of each state (prompt + partial), as the
    critic predicts it: not clamped to [0, 1] (clamping would hide part of its error)."""
    ids = [
        list(tokenizer(p)["input_ids"])
        + (list(tokenizer(r, add_special_tokens=False)["input_ids"]) if r else [])
        for p, r in states
    ]
    pad = int(tokenizer.pad_token_id)
    out: list[float] = []
    for i in range(0, len(ids), micro):
        chunk = ids[i : i + micro]
        width = max(len(x) for x in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (b, W) right-padded
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, x in enumerate(chunk):
            input_ids[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
        values = critic(input_ids, mask)  # (b, W)
        last = torch.tensor([len(x) - 1 for x in chunk])
        out += values[torch.arange(len(chunk)), last].tolist()
    return out


_MC = "_mc"  # key of VinePPO's ValueEstimates (returns, tokens) in `_Probe.estimate`'s output


def reuse_name(k: int) -> str:
    return f"VinePPO K={k}, reusing returns"


class _Probe:
    def __init__(self, services: Any, tokenizer: Any, version: int, cfg: ProbeConfig) -> None:
        self.s, self.tok, self.version, self.cfg = services, tokenizer, version, cfg

    def sampling(self, offset: int) -> SamplingParams:
        return SamplingParams(
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_tokens,
            seed=self.cfg.seed * 1009 + offset,
        )

    def options(self, desc: str) -> JobOptions:
        return JobOptions(job_size=self.cfg.job_size, desc=desc, progress=self.cfg.progress)

    async def values(self, items: list[ValueItem], k: int, offset: int) -> list[Any]:
        return await run_value_jobs(
            self.s.queue,
            items,
            version=self.version,
            k=k,
            sampling=self.sampling(offset),
            options=self.options(f"values k={k}"),
        )

    async def estimate(self, items: list[ValueItem], critic: Any) -> dict[str, Any]:
        """Ground truth, VinePPO and (optionally) the critic for each item."""
        cfg = self.cfg
        truth = await self.values(items, cfg.truth_k, 2)
        out: dict[str, Any] = {
            "truth": [v.value for v in truth],
            "terminal": [v.terminal for v in truth],
        }
        if cfg.vine_k:
            vine = await self.values(items, cfg.vine_k, 3)
            out[f"VinePPO K={cfg.vine_k}"] = [v.value for v in vine]
            out[_MC] = vine
        if critic is not None:
            states = [(it.prompt, it.partial_response) for it in items]
            out["PPO critic"] = await asyncio.to_thread(
                critic_state_values, critic, self.tok, states
            )
        return out


async def probe_values(
    services: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    prompts: Sequence[str],
    cfg: ProbeConfig,
    *,
    critic: Any = None,
    version: int = 0,
) -> dict[str, Any]:
    """The records of the module docstring (see ``analysis.summarize`` for their use)."""
    probe = _Probe(services, tokenizer, version, cfg)
    # 1) trajectories, graded
    outs = await run_generate_jobs(
        services.queue,
        list(prompts),
        version=version,
        n=cfg.responses,
        sampling=probe.sampling(1),
        options=probe.options("trajectories"),
    )
    items = [
        GradeItem(response=c.text, gold=ex.answer, dataset=ex.dataset)
        for ex, per in zip(examples, outs, strict=True)
        for c in per
    ]
    verdicts = await services.grader.grade(items)
    episodes = build_episodes(examples, prompts, outs, verdicts, tokenizer, cfg.step_rules)
    # 2) one record per (trajectory, step-boundary state); MC on the distinct states
    unique: dict[State, int] = {}
    rec_state, rec_step, rec_ep = [], [], []
    for b, e in enumerate(episodes):
        for i, (start, _) in enumerate(e.spans):
            rec_state.append(unique.setdefault((e.prompt, e.response[:start]), len(unique)))
            rec_step.append(i)
            rec_ep.append(b)
    owner = {u: rec_ep[r] for r, u in reversed(list(enumerate(rec_state)))}  # state -> episode
    state_items = [
        ValueItem(
            prompt=p,
            partial_response=r,
            gold=episodes[owner[u]].example.answer,
            dataset=episodes[owner[u]].example.dataset,
        )
        for (p, r), u in unique.items()
    ]
    # 3) every method's estimate
    est = await probe.estimate(state_items, critic)
    rewards = torch.tensor([e.reward for e in episodes])
    groups = torch.tensor([e.group for e in episodes])
    baseline = group_baseline(rewards, groups)  # (B,) leave-one-out: never the own reward
    methods = [k for k in est if k not in ("truth", "terminal", _MC)]
    preds: dict[str, list[float]] = {m: [est[m][u] for u in rec_state] for m in methods}
    preds[GROUP_BASELINE] = [float(baseline[b]) for b in rec_ep]
    cost: dict[str, dict[str, float]] = {}
    if cfg.vine_k:
        reuse, cost = _reuse_returns(episodes, list(unique), est[_MC], rewards, cfg.vine_k)
        if reuse is not None:
            pairs = zip(rec_ep, rec_step, strict=True)
            preds[reuse_name(cfg.vine_k)] = [float(reuse[b, i]) for b, i in pairs]
    records: dict[str, Any] = {
        "mc_cost": cost,
        "truth": [est["truth"][u] for u in rec_state],
        "step": rec_step,
        "preds": preds,
        "episode": rec_ep,
        "group": [e.group for e in episodes],
        "reward": [e.reward for e in episodes],
        "config": {k: v for k, v in cfg.__dict__.items() if k != "progress"},
    }
    # 4) top-action identification
    records["top"] = await _top_actions(probe, state_items, est, owner, baseline, critic)
    return records


def _reuse_returns(
    episodes: Sequence[Any], states: list[State], mc: Sequence[Any], rewards: torch.Tensor, k: int
) -> tuple[torch.Tensor | None, dict[str, dict[str, float]]]:
    """The baselines (B, S) of ``vine.reuse_returns`` from the first k_u of each state's K MC
    returns, and the MC cost of fixed K and of reuse (continuations, tokens; a state's tokens
    scaled by k_u / K). Terminal and out-of-budget states cost nothing: their value is exact.
    None when the trainer's plan would hold other states (a response with no step at all)."""
    plan = plan_states(
        [e.prompt for e in episodes], [e.response for e in episodes], [e.spans for e in episodes]
    )
    if plan.states != states:
        return None, {}
    k_u = mc_budget(plan, k)
    sampled = [not (v.terminal or v.out_of_budget) for v in mc]
    means = [
        sum(v.returns[:n]) / n if s and n else v.value
        for v, n, s in zip(mc, k_u, sampled, strict=True)
    ]
    _, base = pooled_state_values(plan, torch.tensor(means), torch.tensor(k_u), rewards)
    fixed = {"samples": float(k * sum(sampled)), "tokens": float(sum(v.num_tokens for v in mc))}
    reuse = {
        "samples": float(sum(n for n, s in zip(k_u, sampled, strict=True) if s)),
        "tokens": sum(v.num_tokens * n / k for v, n in zip(mc, k_u, strict=True)),
    }
    return base, {f"VinePPO K={k}": fixed, reuse_name(k): reuse}


async def _top_actions(
    probe: _Probe,
    state_items: list[ValueItem],
    est: dict[str, Any],
    owner: dict[int, int],
    baseline: torch.Tensor,
    critic: Any,
) -> dict[str, Any]:
    cfg = probe.cfg
    open_states = [u for u in range(len(state_items)) if not est["terminal"][u]]
    picked = sorted(
        random.Random(cfg.seed).sample(open_states, min(cfg.top_action_states, len(open_states)))
    )
    if not picked or cfg.candidates < 2:
        return {}
    parents = [state_items[u] for u in picked]
    outs = await run_generate_jobs(
        probe.s.queue,
        [p.prompt + p.partial_response for p in parents],
        version=probe.version,
        n=cfg.candidates,
        sampling=probe.sampling(4),
        options=probe.options("candidate steps"),
    )
    eos = str(probe.tok.eos_token or "")
    children = [
        p.model_copy(
            update={
                "partial_response": p.partial_response
                + first_step(c.text, c.finish_reason == "stop", cfg.step_rules, eos)
            }
        )
        for p, per in zip(parents, outs, strict=True)
        for c in per
    ]
    child = await probe.estimate(children, critic)

    def rows(flat: list[float]) -> list[list[float]]:
        return [flat[i : i + cfg.candidates] for i in range(0, len(flat), cfg.candidates)]

    preds = {m: rows(v) for m, v in child.items() if m not in ("truth", "terminal", _MC)}
    # GRPO/RLOO have one baseline per response: every candidate of a state gets the same value
    preds[GROUP_BASELINE] = [[float(baseline[owner[u]])] * cfg.candidates for u in picked]
    return {"truth": rows(child["truth"]), "preds": preds, "states": picked}
