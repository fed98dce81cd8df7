"""What the RL-free baselines (``restem``, ``dpo_positive``) share with the RL loop.

`SelfTrainRun` holds the data, tokenizer, prompt format (with the run's ``rollout.few_shot``
worked examples, as the RL loop), weight push, validation, the metrics file and the resumable
checkpoints of a run that samples from a policy through the rollout queue, grades with the
reward service, and trains on what it sampled. Its JSONL rows use the RL loop's schema
(``iteration``, ``version``, ``algo``, ``reward/mean``, ``acc/val``, ``time/...``) so
``vineppo report`` plots every method on the same axes.

Resume (``vineppo train --algo restem|dpo_positive --resume``) works like the RL loop's:
``checkpoints/iter-N`` (`services.trainer.runtime.checkpoint`, written atomically after every
iteration) holds what the next iteration depends on, metric rows after N are dropped, and the
run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from services.trainer.client.jobs import JobOptions, run_generate_jobs
from services.trainer.client.local_services import Services
from services.trainer.client.weights import serve_policy
from services.trainer.config import RunConfig
from services.trainer.data.order import DataOrder
from services.trainer.evaluation.evaluate import validation_metrics
from services.trainer.runtime.checkpoint import keep_if_best
from services.trainer.runtime.distributed import broadcast_from_main
from services.trainer.runtime.metrics_log import MetricsLog
from shared.datasets import load_examples
from shared.example import Example
from shared.prompts import format_prompt, style_for
from shared.schemas import Completion, GradeItem, SamplingParams, Verdict

log = logging.getLogger(__name__)


class SelfTrainRun:
    """Shared state of a baseline run; subclasses implement ``run()``."""

    def __init__(self, cfg: RunConfig, services: Services, *, progress: bool = True) -> None:
        from services.trainer.runtime.distributed import init_distributed
        from services.trainer.runtime.model import load_tokenizer, precision

        if not cfg.model.policy:
            raise ValueError("model.policy is empty: point it at the SFT model directory")
        self.cfg, self.services, self.progress = cfg, services, progress
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.info = init_distributed()
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.model.policy)
        self.style = style_for(self.tokenizer)
        load: dict[str, Any] = {"seed": cfg.seed, "arithmetic": cfg.arithmetic}
        self.train = load_examples(cfg.dataset, "train", **load)
        self.val = load_examples(cfg.dataset, "validation", n=cfg.eval.num_problems, **load)
        self.data = DataOrder(len(self.train), cfg.seed)
        self.shots = self.train[: cfg.rollout.few_shot]  # worked examples before each prompt
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.iteration, self.version = 0, 0
        keys = ("iteration", "reward/mean", "acc/val", "time/iteration")
        self.metrics = MetricsLog(self.out, rank=self.info.rank, progress=keys if progress else ())
        self.metrics_path = self.metrics.path
        # where policy-vN/ go for replicas (the shared volume), else <out>/policies
        self.policy_root = getattr(services, "policy_root", None) or self.out / "policies"
        self.ckpt_root = self.out / "checkpoints"
        self.precision = precision(cfg.model.dtype, self.info.device)

    def prompt(self, ex: Example) -> str:
        return format_prompt(
            ex.question,
            style=self.style,
            dataset=ex.dataset,
            tokenizer=self.tokenizer,
            few_shot=self.shots,
        )

    async def push(self, model: Any, version: int) -> None:
        """Save ``model`` as policy ``version``, announce it, wait until replicas serve it."""
        self.version = version
        await serve_policy(self.services, model, self.tokenizer, self.policy_root, version)

    async def sample(
        self, examples: Sequence[Example], n: int, seed: int
    ) -> tuple[list[str], list[list[Completion]], list[Verdict]]:
        """``n`` responses per example from the served version, graded (flat verdicts):
        sampled and graded once, on rank 0, and broadcast (as the RL loop does)."""
        r = self.cfg.rollout
        prompts = [self.prompt(x) for x in examples]
        result: tuple[list[list[Completion]], list[Verdict]] | None = None
        if self.info.rank == 0:
            sampling = SamplingParams(
                temperature=r.temperature,
                top_p=r.top_p,
                max_tokens=r.max_response_tokens,
                seed=seed,
            )
            options = JobOptions(
                job_size=self.services.job_size, desc="sample", progress=self.progress
            )
            outs = await run_generate_jobs(
                self.services.queue,
                prompts,
                version=self.version,
                n=n,
                sampling=sampling,
                options=options,
            )
            items = [
                GradeItem(response=c.text, gold=ex.answer, dataset=ex.dataset)
                for ex, per in zip(examples, outs, strict=True)
                for c in per
            ]
            result = (outs, list(await self.services.grader.grade(items)))
        outs, verdicts = await asyncio.to_thread(broadcast_from_main, result)
        return prompts, outs, verdicts

    async def validate(self) -> dict[str, float]:
        """Pass@1 of the served version on the validation split (as the RL loop measures it):
        rank 0 evaluates, every rank gets the row."""
        prompts = [self.prompt(x) for x in self.val]
        return await validation_metrics(
            self.services,
            self.val,
            prompts,
            version=self.version,
            cfg=self.cfg,
            progress=self.progress,
        )

    def fresh_start(self) -> None:
        """Forget a previous run in ``output_dir``: metrics, checkpoints, ``best/`` (rank 0)."""
        if self.info.rank != 0:
            return
        self.metrics.reset()
        shutil.rmtree(self.ckpt_root, ignore_errors=True)
        shutil.rmtree(self.out / "best", ignore_errors=True)

    def trainer_state(self) -> dict[str, Any]:
        """What every baseline's checkpoint holds besides its own fields."""
        return {
            "iteration": self.iteration,
            "version": self.version,
            "data_position": self.data.position,
            "generator": self.gen.get_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Undo `trainer_state` (after `checkpoint.load_checkpoint`); drop later metric rows."""
        self.iteration, self.version = int(state["iteration"]), int(state["version"])
        self.data.position = int(state["data_position"])
        self.gen.set_state(state["generator"])
        self.metrics.truncate(self.iteration)

    def save_best(self, row: dict[str, Any], model: Any) -> None:
        """Keep ``model`` in ``best/`` when ``row``'s ``acc/val`` is the best so far (the RL
        loop's rule, `keep_if_best`)."""
        if self.info.rank == 0:
            info = {"version": self.version, "iteration": self.iteration}
            keep_if_best(self.out, row, model, self.tokenizer, info)

    def log_row(self, row: dict[str, Any]) -> None:
        """One JSONL line per iteration (`MetricsLog`); rank 0 alone writes."""
        self.metrics.write(row)


def rng_state() -> tuple[Any, torch.Tensor]:
    """The global Python and torch RNG states (what `checkpoint.load_checkpoint` restores)."""
    return random.getstate(), torch.get_rng_state()


def set_rng_state(state: tuple[Any, torch.Tensor]) -> None:
    random.setstate(state[0])
    torch.set_rng_state(state[1])


def rewards_of(outs: Sequence[Sequence[Completion]], verdicts: Sequence[Verdict]) -> list[float]:
    """Flat rewards; a length-truncated response gets 0 (the RL loop's rule)."""
    flat = [c for per in outs for c in per]
    return [
        v.reward if c.finish_reason == "stop" else 0.0 for c, v in zip(flat, verdicts, strict=True)
    ]
