"""DPO-Positive on self-generated pairs, the VinePPO paper's DPO baseline (Table 3).

Each iteration (``vineppo train --algo dpo_positive``):
1) take ``rollout.prompts_per_iteration`` prompts and sample ``dpo.samples_per_prompt``
   responses each from the current policy through the rollout queue; 2) grade them;
3) pair correct (y_w) with incorrect (y_l) responses of the same prompt, at most
   ``dpo.pairs_per_prompt`` pairs per prompt (`make_pairs`); 4) π_ref (the SFT model) scores
   every response once; 5) ``dpo.epochs`` passes of minibatch updates with
   `algos.losses.dpo_positive_loss` on sequence log-probabilities; 6) push v_{N+1},
   validate every ``eval.every`` iterations, write one JSONL row (the RL loop's schema).
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from services.trainer.algos.losses import (
    dpo_positive_loss,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
)
from services.trainer.baselines import SelfTrainRun
from services.trainer.episodes import Batch, build_episodes, collate


def make_pairs(
    rewards: Tensor, group_ids: Tensor, max_pairs: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) response indices: every (correct, incorrect) pair of one group, a
    seeded random ``max_pairs`` of them per group when there are more.

    rewards (B,) in {0, 1}, group_ids (B,) -> two long tensors (P,), groups in input order.
    """
    chosen: list[int] = []
    rejected: list[int] = []
    for g in dict.fromkeys(group_ids.tolist()):  # groups in first-seen order
        rows = (group_ids == g).nonzero().flatten()
        win = rows[rewards[rows] > 0.5].tolist()
        lose = rows[rewards[rows] <= 0.5].tolist()
        pairs = [(w, lo) for w in win for lo in lose]
        if len(pairs) > max_pairs:
            keep = torch.randperm(len(pairs), generator=generator)[:max_pairs].sort().values
            pairs = [pairs[i] for i in keep.tolist()]
        chosen += [w for w, _ in pairs]
        rejected += [lo for _, lo in pairs]
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)


def sequence_logprobs(token_logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """log π(y|x) = Σ_t log π(y_t|…) over response tokens: (B, T), (B, T) -> (B,)."""
    return masked_sum(token_logprobs, response_mask, dim=1)


class DPOPositive(SelfTrainRun):
    """``cfg.iterations`` DPO-Positive iterations against ``services``."""

    def __init__(self, cfg: Any, services: Any, *, progress: bool = True) -> None:
        from services.trainer.distributed import wrap
        from services.trainer.model import load_policy

        super().__init__(cfg, services, progress=progress)
        d = cfg.dpo
        self.beta = d.resolved_beta(cfg.dataset)
        pairs_per_iter = cfg.rollout.prompts_per_iteration * d.pairs_per_prompt
        total = cfg.iterations * d.epochs * math.ceil(pairs_per_iter / d.batch_size)  # upper bound
        self.policy = wrap(
            load_policy(cfg.model.policy, self.info.device, self.dtype), lr=cfg.optim.lr,
            betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
            grad_clip=cfg.optim.grad_clip, zero_stage=cfg.dist.zero_stage, total_steps=total,
            warmup_steps=math.ceil(cfg.optim.warmup_ratio * total),
            lr_end_ratio=cfg.optim.lr_end / cfg.optim.lr, decay_power=cfg.optim.decay_power,
            micro_batch_size=d.micro_batch_size,
            grad_accum_steps=d.batch_size // (d.micro_batch_size * self.info.world_size),
        )  # fmt: skip
        self.ref = load_policy(cfg.model.policy, self.info.device, self.dtype).eval()
        self.ref.requires_grad_(False)

    async def run(self) -> Any:
        self.metrics_path.unlink(missing_ok=True)
        await self.push(self.policy.module, 0)
        row0 = {"iteration": 0, "version": 0, "algo": "dpo_positive", **await self.validate()}
        self.log_row(row0)
        while self.iteration < self.cfg.iterations:
            row = await self.step()
            if self.iteration % self.cfg.eval.every == 0 or self.iteration == self.cfg.iterations:
                row.update(await self.validate())
            self.log_row(row)
        return self.metrics_path

    async def step(self) -> dict[str, Any]:
        """One iteration; returns its metrics row."""
        cfg, d, t_start = self.cfg, self.cfg.dpo, time.monotonic()
        seed = cfg.seed * 100_003 + self.iteration
        examples = [self.train[i] for i in self.data.take(cfg.rollout.prompts_per_iteration)]
        # 1) sample, 2) grade
        t0 = time.monotonic()
        prompts, outs, verdicts = await self.sample(examples, d.samples_per_prompt, seed)
        t_gen = time.monotonic() - t0
        rules = "math" if cfg.dataset == "math" else "gsm8k"
        episodes = build_episodes(examples, prompts, outs, verdicts, self.tokenizer, rules)
        batch = collate(episodes, int(self.tokenizer.pad_token_id))
        # 3) pairs, 4) + 5) reference scores and the DPO-Positive epochs
        chosen, rejected = make_pairs(batch.rewards, batch.group_ids, d.pairs_per_prompt, self.gen)
        t0 = time.monotonic()
        stats: dict[str, float] = {}
        if len(chosen):
            stats = await asyncio.to_thread(self.update, batch, chosen, rejected)
        t_train = time.monotonic() - t0
        # 6) push v_{N+1}
        self.iteration += 1
        t0 = time.monotonic()
        if len(chosen):
            await self.push(self.policy.module, self.version + 1)
        sampled = sum(len(c.token_ids) for per in outs for c in per)
        return {
            "iteration": self.iteration, "version": self.version, "algo": "dpo_positive",
            "reward/mean": float(batch.rewards.mean()), "dpo/pairs": len(chosen),
            "dpo/beta": self.beta, "dpo/lam": d.lam,
            "response/tokens_mean": float(batch.response_mask.sum(1).mean()), **stats,
            "time/generate": t_gen, "time/train": t_train, "time/push": time.monotonic() - t0,
            "time/iteration": time.monotonic() - t_start,
            "rollout/tokens_per_s": sampled / max(t_gen, 1e-9),
            "mem/peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }  # fmt: skip

    def update(self, batch: Batch, chosen: Tensor, rejected: Tensor) -> dict[str, float]:
        """E epochs over the pairs (wrapped round to whole minibatches); mean statistics."""
        from services.trainer.ppo import policy_logprobs

        d, dev = self.cfg.dpo, self.info.device
        batch, chosen, rejected = batch.to(dev), chosen.to(dev), rejected.to(dev)
        ref_tok = policy_logprobs(self.ref, batch, 1.0, d.micro_batch_size)  # (B, L-1)
        ref_seq = sequence_logprobs(ref_tok, batch.response_mask)  # (B,)
        n = math.ceil(len(chosen) / d.batch_size) * d.batch_size
        logs: dict[str, list[float]] = defaultdict(list)
        self.policy.train()
        for _ in range(d.epochs):
            perm = torch.randperm(len(chosen), generator=self.gen)
            perm = perm[torch.arange(n) % len(chosen)]  # (n,) whole minibatches
            for start in range(0, n, d.batch_size):
                mine = perm[start : start + d.batch_size][self.info.rank :: self.info.world_size]
                for m in range(0, len(mine), d.micro_batch_size):
                    idx = mine[m : m + d.micro_batch_size]
                    stats = self._pair_step(batch, chosen[idx], rejected[idx], ref_tok, ref_seq)
                    for key, value in stats.items():
                        logs[key].append(value)
        return {key: sum(v) / len(v) for key, v in logs.items()}

    def _pair_step(
        self, batch: Batch, win: Tensor, lose: Tensor, ref_tok: Tensor, ref_seq: Tensor
    ) -> dict[str, float]:
        """Forward y_w and y_l together, DPO-Positive loss, backward, step."""
        rows = torch.cat([win, lose])  # (2b,)
        sub = batch.select(rows.to(batch.input_ids.device))
        out = self.policy(input_ids=sub.input_ids, attention_mask=sub.attention_mask)
        logp = logprobs_from_logits(out.logits[:, :-1].float(), sub.input_ids[:, 1:])  # (2b, L-1)
        seq = sequence_logprobs(logp, sub.response_mask)  # (2b,)
        b = len(win)
        loss, stats = dpo_positive_loss(
            seq[:b], seq[b:], ref_seq[win], ref_seq[lose], beta=self.beta, lam=self.cfg.dpo.lam
        )
        self.policy.backward(loss)
        self.policy.step()
        with torch.no_grad():
            kl = masked_mean(kl_k3(logp.detach(), ref_tok[rows]), sub.response_mask)
        result = {k: float(v) for k, v in stats.items()}
        result.update({"loss/dpo": float(loss.detach()), "loss/policy": float(loss.detach()),
                       "kl/ref": float(kl)})  # fmt: skip
        return result
