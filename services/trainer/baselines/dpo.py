"""DPO-Positive on self-generated pairs, the VinePPO paper's DPO baseline (Table 3), run as the
authors run it: one offline round sampled from the SFT model, then ``dpo.epochs`` passes.

``vineppo train --algo dpo_positive``:
1) serve the SFT model (version 0) and validate it (row 0);
2) the round: ``dpo.samples_per_prompt`` (64) responses for each of ``dpo.train_prompts``
   training prompts (null = all of them, the paper) from the SFT model, graded; a truncated
   response counts as incorrect;
3) pair correct (y_w) with incorrect (y_l) responses of the same prompt, at most
   ``dpo.pairs_per_prompt`` (64) per prompt, a seeded random subset when there are more
   (`make_pairs`); a prompt whose responses are all right or all wrong gives none;
4) π_ref (the SFT model) scores every paired response once; the round is saved to
   ``dpo-round.pt`` (resume reads it instead of sampling again);
5) ``dpo.epochs`` (3) shuffled passes over the pairs in minibatches of ``dpo.batch_size``
   (64) with `algos.losses.dpo_positive_loss` on sequence log-probabilities (logits divided
   by the sampling temperature, as the authors' trainer does); the LR schedule spans exactly
   these steps. After every epoch: push it as version e, validate, keep ``best/`` by
   validation accuracy, write row e and ``checkpoints/iter-e``.
``iterations`` is not used: there is one round (rows are epochs).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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
from services.trainer.baselines.common import SelfTrainRun, rewards_of, rng_state, set_rng_state
from services.trainer.data.order import stream_seed
from services.trainer.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from services.trainer.runtime.memory import memory_stats

log = logging.getLogger(__name__)

ROUND_FILE = "dpo-round.pt"
PROMPTS_PER_CHUNK = 256
"""The round is sampled this many prompts at a time (each chunk with its own derived seed),
so only paired responses of one chunk are held as completions at once."""


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


@dataclass
class PairRound:
    """The offline round: paired sequences, π_ref's scores of them, the pairs."""

    seqs: list[Tensor] = field(default_factory=list)
    """prompt + response token ids (int32, (len,)) of every response that is in a pair."""
    prompt_lens: list[int] = field(default_factory=list)
    ref_logprobs: list[Tensor] = field(default_factory=list)
    """π_ref log-prob of each response token (logits / sampling temperature), (len,) each."""
    chosen: list[int] = field(default_factory=list)
    """Index into ``seqs`` of y_w of every pair."""
    rejected: list[int] = field(default_factory=list)
    """Index into ``seqs`` of y_l of every pair."""
    stats: dict[str, float] = field(default_factory=dict)
    """Of the whole round: ``reward/mean``, ``response/tokens_mean``, ``dpo/prompts``, ..."""

    def ref_seq(self) -> Tensor:
        """log π_ref(y|x) of every sequence: (N,)."""
        return torch.tensor([float(x.sum()) for x in self.ref_logprobs])

    def batch(self, rows: Sequence[int], pad_id: int, with_ref: bool = True) -> dict[str, Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` (b, L) and, in the action frame,
        ``response_mask`` and ``ref_logprobs`` (b, L−1; zeros without ``with_ref``) of
        sequences ``rows``."""
        width = max(len(self.seqs[r]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width - 1))
        ref = torch.zeros((len(rows), width - 1))
        for i, r in enumerate(rows):
            seq, p = self.seqs[r], self.prompt_lens[r]
            ids[i, : len(seq)] = seq
            attention[i, : len(seq)] = 1
            mask[i, p - 1 : len(seq) - 1] = 1.0
            if with_ref:
                ref[i, p - 1 : len(seq) - 1] = self.ref_logprobs[r]
        return {
            "input_ids": ids,
            "attention_mask": attention,
            "response_mask": mask,
            "ref_logprobs": ref,
        }


class DPOPositive(SelfTrainRun):
    """One offline DPO-Positive round against ``services``."""

    def __init__(self, cfg: Any, services: Any, *, progress: bool = True) -> None:
        from services.trainer.runtime.model import load_policy

        super().__init__(cfg, services, progress=progress)
        self.beta = cfg.dpo.resolved_beta(cfg.dataset)
        self.temperature = cfg.rollout.temperature
        self.ref = load_policy(cfg.model.policy, self.info.device, self.precision).eval()
        self.ref.requires_grad_(False)
        self.policy: Any = None  # built once the round's size (the LR schedule) is known
        self.round_path = self.out / ROUND_FILE

    # -- the run ------------------------------------------------------------------------
    async def run(self, resume: bool = False) -> Any:
        """Round, then epochs; with ``resume``, continue from the newest checkpoint."""
        path = latest_checkpoint(self.ckpt_root) if resume else None
        if path is not None:
            data = self.load_round()
            self.policy = self._engine(len(data.chosen))
            state = load_checkpoint(path, {"policy": self.policy})
            rng = rng_state()
            self.restore(state)
            await self.push(self.policy.module, self.version)
            set_rng_state(rng)
            log.info("resumed from %s (epoch %d)", path, self.iteration)
        else:
            self.fresh_start()
            self.round_path.unlink(missing_ok=True)
            await self.push(self.ref, 0)  # the SFT model = π_ref = version 0
            row0 = {"iteration": 0, "version": 0, "algo": "dpo_positive", **await self.validate()}
            self.log_row(row0)
            data = await self.sample_round()
            self.save_round(data)
            self.policy = self._engine(len(data.chosen))
            await asyncio.to_thread(self.checkpoint)
        if not data.chosen:
            log.warning("no prompt gave a (correct, incorrect) pair: nothing to train")
            return self.metrics_path
        while self.iteration < self.cfg.dpo.epochs:
            row = await self.epoch(data)
            self.log_row(row)
            self.save_best(row, self.policy.module)
            await asyncio.to_thread(self.checkpoint)
        return self.metrics_path

    def checkpoint(self) -> None:
        """``checkpoints/iter-e``: the policy engine (weights, optimizer, LR schedule), data
        position, generator and RNG."""
        save_checkpoint(
            self.ckpt_root, self.iteration, {"policy": self.policy}, self.trainer_state()
        )

    # -- the round ----------------------------------------------------------------------
    async def sample_round(self) -> PairRound:
        """Sample, grade and pair the round from the served SFT model; score with π_ref."""
        from services.trainer.data.episodes import encode_prompt

        cfg, d, t0 = self.cfg, self.cfg.dpo, time.monotonic()
        count = min(d.train_prompts or len(self.train), len(self.train))
        order = list(range(len(self.train)))  # DataOrder's first epoch, drawn in one go
        random.Random(self.data.seed * 1_000_003).shuffle(order)
        examples = [self.train[i] for i in order[:count]]
        self.data.position = count
        data, rewards, lengths = PairRound(), [], []
        for c, start in enumerate(range(0, len(examples), PROMPTS_PER_CHUNK)):
            part = examples[start : start + PROMPTS_PER_CHUNK]
            prompts, outs, verdicts = await self.sample(
                part, d.samples_per_prompt, stream_seed(cfg.seed, "dpo-round", c)
            )
            flat = rewards_of(outs, verdicts)
            rewards += flat
            lengths += [len(x.token_ids) for per in outs for x in per]
            groups = torch.tensor([g for g, per in enumerate(outs) for _ in per])
            win, lose = make_pairs(torch.tensor(flat), groups, d.pairs_per_prompt, self.gen)
            p_ids = [encode_prompt(self.tokenizer, p) for p in prompts]
            seqs = [(p_ids[g], list(x.token_ids)) for g, per in enumerate(outs) for x in per]
            index: dict[int, int] = {}  # flat response -> row of data.seqs
            for i in sorted(set(win.tolist()) | set(lose.tolist())):
                index[i] = len(data.seqs)
                data.seqs.append(torch.tensor(seqs[i][0] + seqs[i][1], dtype=torch.int32))
                data.prompt_lens.append(len(seqs[i][0]))
            data.chosen += [index[i] for i in win.tolist()]
            data.rejected += [index[i] for i in lose.tolist()]
        t_gen = time.monotonic() - t0
        t0 = time.monotonic()
        data.ref_logprobs = await asyncio.to_thread(self._ref_logprobs, data)
        data.stats = {
            "reward/mean": sum(rewards) / max(1, len(rewards)),
            "response/tokens_mean": sum(lengths) / max(1, len(lengths)),
            "dpo/prompts": float(count),
            "dpo/responses": float(len(rewards)),
            "dpo/pairs": float(len(data.chosen)),
            "time/generate": t_gen,
            "time/ref": time.monotonic() - t0,
        }
        return data

    @torch.no_grad()
    def _ref_logprobs(self, data: PairRound) -> list[Tensor]:
        """π_ref's log-prob of every response token of every paired sequence."""
        out: list[Tensor] = []
        micro, pad = self.cfg.dpo.micro_batch_size, int(self.tokenizer.pad_token_id)
        for start in range(0, len(data.seqs), micro):
            rows = list(range(start, min(start + micro, len(data.seqs))))
            b = {k: v.to(self.info.device) for k, v in data.batch(rows, pad, False).items()}
            logits = self.ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            logp = logprobs_from_logits(
                logits[:, :-1].float(), b["input_ids"][:, 1:], self.temperature
            ).cpu()
            for i, r in enumerate(rows):
                p, n = data.prompt_lens[r], len(data.seqs[r])
                out.append(logp[i, p - 1 : n - 1].clone())
        return out

    def save_round(self, data: PairRound) -> None:
        """Write the round to ``dpo-round.pt`` atomically (rank 0)."""
        if self.info.rank != 0:
            return
        tmp = self.round_path.with_suffix(f".tmp-{os.getpid()}")
        torch.save(asdict(data), tmp)
        os.replace(tmp, self.round_path)

    def load_round(self) -> PairRound:
        return PairRound(**torch.load(self.round_path, map_location="cpu", weights_only=False))

    # -- the epochs ---------------------------------------------------------------------
    def _engine(self, num_pairs: int) -> Any:
        """The policy (the SFT model) wrapped with AdamW and an LR schedule over exactly
        ``dpo.epochs × ⌈pairs / batch_size⌉`` optimizer steps."""
        from services.trainer.runtime.distributed import wrap
        from services.trainer.runtime.model import load_policy

        cfg, d = self.cfg, self.cfg.dpo
        total = max(1, d.epochs * math.ceil(num_pairs / d.batch_size))
        return wrap(
            load_policy(cfg.model.policy, self.info.device, self.precision),
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            weight_decay=cfg.optim.weight_decay,
            grad_clip=cfg.optim.grad_clip,
            zero_stage=cfg.dist.zero_stage,
            total_steps=total,
            warmup_steps=math.ceil(cfg.optim.warmup_ratio * total),
            lr_end_ratio=cfg.optim.lr_end / cfg.optim.lr,
            decay_power=cfg.optim.decay_power,
            micro_batch_size=d.micro_batch_size,
            grad_accum_steps=d.batch_size // (d.micro_batch_size * self.info.world_size),
            bf16=self.precision.weights == torch.bfloat16,
        )

    async def epoch(self, data: PairRound) -> dict[str, Any]:
        """One pass over the pairs, then push, validate; returns the epoch's metrics row."""
        t_start = time.monotonic()
        stats = await asyncio.to_thread(self.update, data)
        t_train = time.monotonic() - t_start
        self.iteration += 1
        t0 = time.monotonic()
        await self.push(self.policy.module, self.iteration)
        t_push = time.monotonic() - t0
        first = self.iteration == 1  # the round's sampling time is paid before epoch 1
        round_stats = {k: v for k, v in data.stats.items() if first or not k.startswith("time/")}
        row = {
            "iteration": self.iteration,
            "version": self.version,
            "algo": "dpo_positive",
            "dpo/beta": self.beta,
            "dpo/lam": self.cfg.dpo.lam,
            **round_stats,
            **stats,
            "time/train": t_train,
            "time/push": t_push,
            "time/iteration": time.monotonic()
            - t_start
            + (data.stats["time/generate"] + data.stats["time/ref"] if first else 0.0),
            **memory_stats(self.info.device),
        }
        row.update(await self.validate())
        return row

    def update(self, data: PairRound) -> dict[str, float]:
        """One shuffled pass (wrapped round to whole minibatches); mean statistics."""
        d, info = self.cfg.dpo, self.info
        chosen, rejected = torch.tensor(data.chosen), torch.tensor(data.rejected)
        ref_seq = data.ref_seq()
        n = math.ceil(len(chosen) / d.batch_size) * d.batch_size
        perm = torch.randperm(len(chosen), generator=self.gen)
        perm = perm[torch.arange(n) % len(chosen)]  # (n,) whole minibatches
        logs: dict[str, list[float]] = defaultdict(list)
        self.policy.train()
        for start in range(0, n, d.batch_size):
            mine = perm[start : start + d.batch_size][info.rank :: info.world_size]
            for m in range(0, len(mine), d.micro_batch_size):
                idx = mine[m : m + d.micro_batch_size]
                step = self._pair_step(data, chosen[idx], rejected[idx], ref_seq)
                for key, value in step.items():
                    logs[key].append(value)
        return {key: sum(v) / len(v) for key, v in logs.items()}

    def _pair_step(
        self, data: PairRound, win: Tensor, lose: Tensor, ref_seq: Tensor
    ) -> dict[str, float]:
        """Forward y_w and y_l together, DPO-Positive loss, backward, step."""
        rows = torch.cat([win, lose]).tolist()  # (2b,)
        pad = int(self.tokenizer.pad_token_id)
        b = {k: v.to(self.info.device) for k, v in data.batch(rows, pad).items()}
        out = self.policy(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        logp = logprobs_from_logits(
            out.logits[:, :-1].float(), b["input_ids"][:, 1:], self.temperature
        )  # (2b, L-1) fmt: skip
        seq = sequence_logprobs(logp, b["response_mask"])  # (2b,)
        ref = ref_seq[rows].to(seq.device)  # (2b,)
        k = len(win)
        loss, stats = dpo_positive_loss(
            seq[:k], seq[k:], ref[:k], ref[k:], beta=self.beta, lam=self.cfg.dpo.lam
        )
        self.policy.backward(loss)
        self.policy.step()
        with torch.no_grad():
            kl = masked_mean(kl_k3(logp.detach(), b["ref_logprobs"]), b["response_mask"])
        result = {k: float(v) for k, v in stats.items()}
        result.update(
            {
                "loss/dpo": float(loss.detach()),
                "loss/policy": float(loss.detach()),
                "kl/ref": float(kl),
            }
        )
        return result
