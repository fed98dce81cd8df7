"""The RL loop: sample → (MC values | critic) → advantages → PPO epochs → push weights → eval.

One iteration (docs/algorithms.md, One iteration):
1) take P prompts in a seeded order and sample n responses each from policy v_N through the
   queue; 2) grade them (the reward service); 3) cut responses into reasoning steps;
4) advantages: ``vine`` asks the queue for the MC value of every distinct step-boundary
   state (still v_N), ``ppo`` runs the critic, ``grpo``/``rloo`` use the group of responses;
5) E epochs of minibatch PPO updates (and critic updates for ``ppo``); 6) save policy v_{N+1}
atomically, announce it and wait until replicas serve it; 7) validate every few iterations;
8) write one JSONL line of metrics and a resumable checkpoint.

Under a launcher (W ranks) every rank takes the same path through this loop: rank 0 alone
talks to the queue and the grader (sampling, grading, MC values, waiting for replicas,
validation) and broadcasts what it got (`on_main`), so every rank holds the same batch and
advantages; the critic's forward, the PPO epochs, the weight save and the checkpoint are
collectives of all ranks. At start-up the ranks check that they agree on the config and on
the checkpoint they resume from.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from services.trainer.algos.advantages import AdvantageInputs, compute_advantages
from services.trainer.client.jobs import (
    JobOptions,
    run_generate_jobs,
)
from services.trainer.client.local_services import Services
from services.trainer.client.weights import serve_policy
from services.trainer.config import RunConfig
from services.trainer.data.episodes import Batch, Episode, build_episodes, collate, error_rate
from services.trainer.data.order import DataOrder, stream_seed
from services.trainer.evaluation.evaluate import validation_metrics
from services.trainer.overrides import flatten, merge_dicts
from services.trainer.rl.critic import (
    critic_schedule,
    probe_values_now,
    returns_fit,
    warmup_critic,
)
from services.trainer.rl.ppo import UpdateInputs, critic_values, policy_logprobs, ppo_epochs
from services.trainer.rl.vine import mc_step_values
from services.trainer.runtime.checkpoint import (
    keep_if_best,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from services.trainer.runtime.distributed import (
    broadcast_from_main,
    check_same_on_every_rank,
    on_main,
)
from services.trainer.runtime.memory import memory_stats, reset_peak
from services.trainer.runtime.metrics_log import MetricsLog
from shared.datasets import load_examples
from shared.example import Example
from shared.prompts import format_prompt, style_for
from shared.schemas import GradeItem, SamplingParams, Verdict

log = logging.getLogger(__name__)


class RLTrainer:
    """Runs ``cfg.iterations`` RL iterations of ``cfg.algo`` against ``services``."""

    def __init__(
        self, cfg: RunConfig, services: Services, *, progress: bool = True, keep_best: bool = True
    ) -> None:
        from services.trainer.runtime.distributed import init_distributed, wrap
        from services.trainer.runtime.model import (
            Critic,
            load_policy,
            load_tokenizer,
            precision,
        )

        if not cfg.model.policy:
            raise ValueError("model.policy is empty: point it at the SFT model directory")
        self.cfg, self.services, self.progress = cfg, services, progress
        self.keep_best = keep_best  # keep the best policy by validation Pass@1 in best/
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.info = init_distributed()
        if cfg.dist.world_size != self.info.world_size:  # the launcher's world size rules
            cfg = RunConfig.model_validate(
                merge_dicts(cfg.model_dump(), {"dist": {"world_size": self.info.world_size}})
            )
            self.cfg = cfg
        check_same_on_every_rank("the run config", flatten(cfg.model_dump(mode="json")))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.model.policy)
        self.style = style_for(self.tokenizer)
        prec = precision(cfg.model.dtype, self.info.device)
        common: dict[str, Any] = dict(
            betas=cfg.optim.betas,
            weight_decay=cfg.optim.weight_decay,
            grad_clip=cfg.optim.grad_clip,
            zero_stage=cfg.dist.zero_stage,
            total_steps=cfg.total_steps,
            warmup_steps=cfg.warmup_steps,
            lr_end_ratio=cfg.optim.lr_end / cfg.optim.lr,
            decay_power=cfg.optim.decay_power,
            micro_batch_size=cfg.ppo.micro_batch_size,
            grad_accum_steps=cfg.grad_accum_steps,
            bf16=prec.weights == torch.bfloat16,  # DeepSpeed's bf16 mode (CUDA only)
        )
        policy = load_policy(cfg.model.policy, self.info.device, prec)
        self.policy = wrap(policy, lr=cfg.optim.lr, **common)
        self.ref = load_policy(cfg.model.policy, self.info.device, prec).eval()
        self.ref.requires_grad_(False)
        self.critic = None
        if cfg.algo == "ppo":  # VinePPO never builds a critic
            critic = Critic.from_pretrained(cfg.model.policy, prec, init=cfg.ppo.critic_init)
            self.critic = wrap(critic, **critic_schedule(cfg, common))
        load: dict[str, Any] = {"seed": cfg.seed, "arithmetic": cfg.arithmetic}
        self.train = load_examples(cfg.dataset, "train", **load)
        self.val = load_examples(cfg.dataset, "validation", n=cfg.eval.num_problems, **load)
        self.data = DataOrder(len(self.train), cfg.seed)
        self.shots = self.train[: cfg.rollout.few_shot]  # worked examples before each prompt
        self.iteration, self.version = 0, 0
        self.gen = torch.Generator().manual_seed(cfg.seed)
        keys = ("iteration", "reward/mean", "acc/val", "kl/ref", "time/iteration")
        self.metrics = MetricsLog(
            self.out, rank=self.info.rank, tensorboard=True, progress=keys if progress else ()
        )
        self.metrics_path = self.metrics.path
        self.ckpt_root = self.out / "checkpoints"
        self.policy_root = services.policy_root or self.out / "policies"

    # -- helpers ----------------------------------------------------------------------
    def prompt(self, ex: Example) -> str:
        return format_prompt(
            ex.question,
            style=self.style,
            dataset=ex.dataset,
            tokenizer=self.tokenizer,
            few_shot=self.shots,
        )

    def engines(self) -> dict[str, Any]:
        return {"policy": self.policy} | ({"critic": self.critic} if self.critic else {})

    def sampling(self, seed: int) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(
            temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_response_tokens, seed=seed
        )

    def job_options(self, desc: str) -> JobOptions:
        return JobOptions(job_size=self.services.job_size, desc=desc, progress=self.progress)

    async def push(self) -> None:
        """Save policy v_N (every rank), announce it and wait until enough replicas serve it
        (rank 0; a timeout there fails every rank)."""
        await serve_policy(
            self.services, self.policy.module, self.tokenizer, self.policy_root, self.version
        )

    # -- resume -----------------------------------------------------------------------
    def resume(self) -> bool:
        """Load the newest complete checkpoint; True when one was found."""
        path = latest_checkpoint(self.ckpt_root)
        check_same_on_every_rank("the checkpoint to resume from", path and path.name)
        if path is None:
            return False
        state = load_checkpoint(path, self.engines())
        self.iteration, self.version = state["iteration"], state["version"]
        self.data.position = state["data_position"]
        self.gen.set_state(state["generator"])
        self.metrics.truncate(self.iteration)
        log.info("resumed from %s (iteration %d)", path, self.iteration)
        return True

    def checkpoint(self) -> None:
        state = {
            "iteration": self.iteration,
            "version": self.version,
            "data_position": self.data.position,
            "generator": self.gen.get_state(),
        }
        save_checkpoint(self.ckpt_root, self.iteration, self.engines(), state)

    # -- the loop ---------------------------------------------------------------------
    async def run(self, resume: bool = False) -> Path:
        if not (resume and self.resume()):
            self.metrics.reset()
            shutil.rmtree(self.out / "best", ignore_errors=True)  # a fresh run's own best
        await self.push()
        if self.iteration == 0:
            row0: dict[str, Any] = {"iteration": 0, "version": self.version}
            if self.critic is not None and self.cfg.ppo.critic_warmup_iterations:
                row0.update(await warmup_critic(self))  # value warm-up on π_ref's responses
            if self.cfg.eval.every:
                row0.update(await self.validate())
            if len(row0) > 2:
                self.log_row(row0)
                self.save_best(row0)
        while self.iteration < self.cfg.iterations:
            row = await self.step()
            if self.iteration % self.cfg.eval.every == 0 or self.iteration == self.cfg.iterations:
                row.update(await self.validate())
            self.log_row(row)
            self.save_best(row)
            await asyncio.to_thread(self.checkpoint)
        return self.metrics_path

    async def validate(self) -> dict[str, float]:
        """Validation Pass@1 of the current policy: rank 0 evaluates, every rank gets the row."""
        prompts = [self.prompt(x) for x in self.val]
        row = await validation_metrics(
            self.services,
            self.val,
            prompts,
            version=self.version,
            cfg=self.cfg,
            progress=self.progress,
        )
        if self.cfg.eval.value_probe_prompts:
            row.update(await probe_values_now(self))
        return row

    # -- best-by-validation policy (read by `vineppo eval --select-on validation`) -------
    def save_best(self, row: dict[str, Any]) -> None:
        """Keep the policy of ``row`` in ``best/`` when its ``acc/val`` is the best so far."""
        if self.keep_best and self.info.rank == 0:
            info = {"version": self.version, "iteration": self.iteration}
            keep_if_best(self.out, row, self.policy.module, self.tokenizer, info)

    def log_row(self, row: dict[str, Any]) -> None:
        """One JSONL line per iteration and TensorBoard scalars (`MetricsLog`; rank 0)."""
        self.metrics.write(row)

    async def sample(
        self, examples: list[Example], seed: int, desc: str = "sample"
    ) -> tuple[list[Episode], Batch, list[Verdict], float, int]:
        """n responses per example from the served version, graded once on rank 0 and shared
        with every rank, cut into steps: (episodes, batch, verdicts, seconds, tokens)."""
        cfg = self.cfg
        prompts = [self.prompt(x) for x in examples]

        async def generate_and_grade() -> tuple[list[list[Any]], list[Verdict], float]:
            t0 = time.monotonic()
            outs = await run_generate_jobs(
                self.services.queue,
                prompts,
                version=self.version,
                n=cfg.rollout.responses_per_prompt,
                sampling=self.sampling(seed),
                options=self.job_options(desc),
            )
            t_gen = time.monotonic() - t0
            items = [
                GradeItem(response=c.text, gold=ex.answer, dataset=ex.dataset)
                for ex, per in zip(examples, outs, strict=True)
                for c in per
            ]
            return outs, list(await self.services.grader.grade(items)), t_gen

        outs, verdicts, t_gen = await on_main(generate_and_grade)
        rules = "math" if cfg.dataset == "math" else "gsm8k"  # deterministic on every rank
        episodes = build_episodes(examples, prompts, outs, verdicts, self.tokenizer, rules)
        batch = collate(episodes, int(self.tokenizer.pad_token_id))
        tokens = sum(len(c.token_ids) for per in outs for c in per)
        return episodes, batch, verdicts, t_gen, tokens

    async def step(self) -> dict[str, Any]:
        """One RL iteration; returns its metrics row."""
        cfg, t_start, cpu_start = self.cfg, time.monotonic(), time.process_time()
        reset_peak(self.info.device)
        examples = [self.train[i] for i in self.data.take(cfg.rollout.prompts_per_iteration)]
        # 1) sample n responses per prompt from v_N, 2) grade, 3) cut into steps
        seed = stream_seed(cfg.seed, "sample", self.iteration)
        episodes, batch, verdicts, t_gen, sampled = await self.sample(examples, seed)
        # 4) advantages: on every rank when they need the critic (its forward is a collective
        # under ZeRO-3; rank 0's are used), else on rank 0 (MC values go through the queue)
        t0 = time.monotonic()
        mc_seed = stream_seed(cfg.seed, "mc", self.iteration)
        if cfg.algo == "ppo":
            result = await self.advantages(episodes, batch, mc_seed)
            adv, extra, value_stats = await asyncio.to_thread(broadcast_from_main, result)
        else:
            adv, extra, value_stats = await on_main(
                lambda: self.advantages(episodes, batch, mc_seed)
            )
        t_values = time.monotonic() - t0
        # 5) PPO epochs (in a thread so replicas' heartbeats keep beating)
        t0 = time.monotonic()
        stats = await asyncio.to_thread(self.update, batch, adv, extra)
        t_train = time.monotonic() - t0
        # 6) push v_{N+1}
        self.iteration += 1
        self.version += 1
        t0 = time.monotonic()
        await self.push()
        mask = batch.response_mask.bool()
        return {
            "iteration": self.iteration,
            "version": self.version,
            "algo": cfg.algo,
            "reward/mean": float(batch.rewards.mean()),
            "grade/errors": error_rate(verdicts),
            "adv/mean": float(adv[mask].mean()),
            "adv/std": float(adv[mask].std()),
            "response/tokens_mean": float(batch.response_mask.sum(1).mean()),
            "response/truncated": sum(e.finish_reason != "stop" for e in episodes) / len(episodes),
            **value_stats,
            **stats,
            "time/generate": t_gen,
            "time/values": t_values,
            "time/train": t_train,
            "time/push": time.monotonic() - t0,
            "time/iteration": time.monotonic() - t_start,
            "time/cpu_iteration": time.process_time() - cpu_start,
            "rollout/tokens_per_s": sampled / max(t_gen, 1e-9),
            **memory_stats(self.info.device),  # host RSS; peak CUDA memory on a GPU
        }

    async def advantages(
        self, episodes: list[Episode], batch: Batch, seed: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        cfg = self.cfg
        inputs = AdvantageInputs(
            rewards=batch.rewards,
            response_mask=batch.response_mask,
            step_ids=batch.step_ids.clamp(min=0),
            group_ids=batch.group_ids,
            gamma=cfg.ppo.gamma,
            lam=cfg.ppo.lam,
        )
        stats: dict[str, float] = {}
        if cfg.algo == "vine":
            values = await mc_step_values(
                self.services.queue,
                episodes,
                batch.rewards,
                vine=cfg.vine,
                version=self.version,
                sampling=self.sampling,
                seed=seed,
                options=self.job_options("mc values"),
            )
            inputs.step_values, inputs.next_step_values = (
                values.step_values,
                values.next_step_values,
            )
            inputs.num_steps, inputs.mc_step_cap = values.num_steps, values.mc_step_cap
            stats = values.stats
        elif cfg.algo == "ppo":
            assert self.critic is not None
            inputs.values = await asyncio.to_thread(
                critic_values, self.critic, batch, cfg.ppo.micro_batch_size
            )
        adv, extra = compute_advantages("gae" if cfg.algo == "ppo" else cfg.algo, inputs)
        if inputs.values is not None:
            extra["old_values"] = inputs.values
            stats = returns_fit(inputs.values, extra["returns"], batch.response_mask)
        return adv, extra, stats

    def update(
        self, batch: Batch, adv: torch.Tensor, extra: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        cfg, dev = self.cfg, self.info.device
        batch = batch.to(dev)
        t = cfg.rollout.temperature
        micro = cfg.ppo.micro_batch_size
        self.policy.eval()  # dropout is off anyway; eval keeps it so
        old = policy_logprobs(self.policy, batch, t, micro)
        ref = policy_logprobs(self.ref, batch, t, micro)
        inputs = UpdateInputs(
            batch=batch,
            advantages=adv.to(dev),
            old_logprobs=old,
            ref_logprobs=ref,
            old_values=extra.get("old_values"),
            returns=extra.get("returns"),
        )
        return ppo_epochs(
            self.policy,
            self.critic,
            inputs,
            cfg.ppo,
            t,
            self.gen,
            rank=self.info.rank,
            world_size=self.info.world_size,
        )
