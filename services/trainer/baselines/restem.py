"""RestEM (iterative rejection finetuning; Singh et al. 2023), the VinePPO paper's baseline.

Each iteration (``vineppo train --algo restem``):
1) sample ``restem.samples_per_prompt`` responses per training prompt from the selected
   checkpoint through the rollout queue; 2) grade them and keep the correct ones (distinct,
   at most ``max_per_prompt`` per prompt); 3) finetune *the base SFT model* on them for
   ``restem.epochs`` epochs (the SFT pieces of ``sft.py``: masked-prompt labels, `collate`,
   DeepSpeed `wrap`); after every epoch the checkpoint is pushed and validated;
4) select the checkpoint before the first drop of validation accuracy (`select_checkpoint`;
   training stops there); it becomes ``output_dir/best`` and is what the next iteration
   samples from; 5) with ``stop_on_drop`` the run ends when an iteration's selected
   checkpoint validates below the previous one (that iteration's row is still written).
One JSONL row per iteration; iteration 0 is the SFT model's validation. After every iteration
``checkpoints/iter-N`` keeps what the next one needs (data position, RNG, the selected
weights, the accuracy to beat), so ``--resume`` after a kill reproduces the run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import shutil
import time
from collections.abc import Sequence
from typing import Any

import torch

from services.trainer.baselines.common import SelfTrainRun, rewards_of, rng_state, set_rng_state
from services.trainer.client.weights import policy_dir
from services.trainer.data.order import stream_seed
from services.trainer.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from services.trainer.sft.train import IGNORE, collate
from shared.schemas import Completion

log = logging.getLogger(__name__)


def select_checkpoint(accuracies: Sequence[float]) -> int:
    """Index of the checkpoint right before validation accuracy first drops (the last one
    when it never drops): [0.2, 0.3, 0.3, 0.1, 0.5] -> 2."""
    if not accuracies:
        raise ValueError("no checkpoints to select from")
    for i in range(1, len(accuracies)):
        if accuracies[i] < accuracies[i - 1]:
            return i - 1
    return len(accuracies) - 1


def keep_correct(
    prompt_ids: Sequence[Sequence[int]],
    outs: Sequence[Sequence[Completion]],
    rewards: Sequence[float],
    eos_id: int,
    max_per_prompt: int | None = None,
) -> list[tuple[list[int], list[int]]]:
    """SFT rows (input_ids, labels) of the distinct correct responses; labels −100 on the
    prompt; an EOS is appended when the engine did not return one."""
    rows: list[tuple[list[int], list[int]]] = []
    flat = iter(rewards)
    for p_ids, per in zip(prompt_ids, outs, strict=True):
        seen: set[tuple[int, ...]] = set()
        for c in per:
            reward = next(flat)
            resp = list(c.token_ids)
            if not resp or resp[-1] != eos_id:
                resp.append(eos_id)
            key = tuple(resp)
            if reward < 1.0 or key in seen:
                continue
            if max_per_prompt is not None and len(seen) >= max_per_prompt:
                continue
            seen.add(key)
            rows.append(([*p_ids, *resp], [IGNORE] * len(p_ids) + resp))
    return rows


class RestEM(SelfTrainRun):
    """``cfg.iterations`` RestEM iterations against ``services``."""

    async def run(self, resume: bool = False) -> Any:
        """The whole run; with ``resume``, continue from the newest checkpoint (if any)."""
        self.best_dir = self.out / "best"
        path = latest_checkpoint(self.ckpt_root) if resume else None
        if path is not None:
            state = load_checkpoint(path, {})
            rng = rng_state()  # as saved; loading a model below must not move it
            self.restore(state)
            prev_acc, stopped = float(state["prev_acc"]), bool(state["stopped"])
            model = self._load_base()  # the selected checkpoint: base architecture, saved weights
            model.load_state_dict(state["selected"])
            await self.push(model, self.version)  # what the run served when it checkpointed
            if self.info.rank == 0:
                self._save_best_model(model)
            del model
            set_rng_state(rng)
            log.info("resumed from %s (iteration %d)", path, self.iteration)
            if stopped:
                return self.metrics_path
        else:
            self.fresh_start()
            base = self._load_base()
            await self.push(base, 0)
            del base
            val0 = await self.validate()
            self.log_row({"iteration": 0, "version": 0, "algo": "restem", **val0})
            prev_acc = val0["acc/val"]
            self._save_best(policy_dir(self.policy_root, 0))
            await asyncio.to_thread(self.checkpoint, prev_acc, False)
        while self.iteration < self.cfg.iterations:
            row = await self.step()
            self.log_row(row)
            stop = False
            if row["restem/kept"]:  # nothing correct: the selected checkpoint stays
                if self.cfg.restem.stop_on_drop and row["acc/val"] < prev_acc:
                    log.info(
                        "validation dropped (%.4g < %.4g): RestEM stops", row["acc/val"], prev_acc
                    )
                    stop = True
                else:
                    prev_acc = row["acc/val"]
                    await self._select(int(row["restem/selected_version"]))
            await asyncio.to_thread(self.checkpoint, prev_acc, stop)
            if stop:
                break
        return self.metrics_path

    def checkpoint(self, prev_acc: float, stopped: bool) -> None:
        """``checkpoints/iter-N``: data position, RNG, the selected weights (what the next
        iteration samples from), the accuracy the next one must beat, and whether it stopped."""
        from services.trainer.runtime.model import load_policy

        if self.info.rank != 0:
            return
        selected = load_policy(self.best_dir, "cpu", self.precision).state_dict()
        state = {
            **self.trainer_state(),
            "prev_acc": prev_acc,
            "stopped": stopped,
            "selected": selected,
        }
        save_checkpoint(self.ckpt_root, self.iteration, {}, state)

    async def _select(self, version: int) -> None:
        """Make policy ``version`` the run's best and the one the next iteration samples."""
        self._save_best(policy_dir(self.policy_root, version))
        if version != self.version:  # a later epoch was pushed: serve the selected one again
            from services.trainer.runtime.model import load_policy

            model = load_policy(self.best_dir, self.info.device, self.precision)
            await self.push(model, self.version + 1)

    def _load_base(self) -> Any:
        from services.trainer.runtime.model import load_policy

        return load_policy(self.cfg.model.policy, self.info.device, self.precision)

    def _save_best_model(self, model: Any) -> None:
        tmp = self.out / ".best.src"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        self._save_best(tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    def _save_best(self, src: Any) -> None:
        tmp = self.out / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(self.best_dir, ignore_errors=True)
        tmp.rename(self.best_dir)

    async def step(self) -> dict[str, Any]:
        """One iteration; returns its metrics row."""
        from services.trainer.data.episodes import encode_prompt

        cfg, rc, t_start = self.cfg, self.cfg.restem, time.monotonic()
        seed = stream_seed(cfg.seed, "restem-sample", self.iteration)
        count = rc.train_prompts or len(self.train)
        examples = [self.train[i] for i in self.data.take(count)]
        # 1) sample from the selected checkpoint, 2) keep the correct ones
        t0 = time.monotonic()
        prompts, outs, verdicts = await self.sample(examples, rc.samples_per_prompt, seed)
        t_gen = time.monotonic() - t0
        rewards = rewards_of(outs, verdicts)
        p_ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        rows = keep_correct(
            p_ids, outs, rewards, int(self.tokenizer.eos_token_id), rc.max_per_prompt
        )
        self.iteration += 1
        # 3) finetune the base model epoch by epoch, 4) validate each epoch, select
        t0 = time.monotonic()
        fit: dict[str, Any] = (
            await self._fit(rows)
            if rows
            else {
                "acc/val": None,
                "time/eval": 0.0,
                "restem/selected_version": self.version,
                "restem/epochs_run": 0,
            }
        )
        t_fit = time.monotonic() - t0
        if fit["acc/val"] is None:  # nothing correct: keep serving the selected checkpoint
            fit.update(await self.validate())
        sampled = sum(len(c.token_ids) for per in outs for c in per)
        return {
            "iteration": self.iteration,
            "version": self.version,
            "algo": "restem",
            "reward/mean": sum(rewards) / len(rewards),
            "restem/kept": len(rows),
            "response/tokens_mean": sampled / len(rewards),
            **fit,
            "time/generate": t_gen,
            "time/train": t_fit - fit["time/eval"],
            "time/iteration": time.monotonic() - t_start - fit["time/eval"],
            "rollout/tokens_per_s": sampled / max(t_gen, 1e-9),
            "mem/peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    async def _fit(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        """Epochs from the base model; each epoch pushed + validated; stop at the first drop."""
        rc = self.cfg.restem
        steps_per_epoch = math.ceil(len(rows) / rc.batch_size)
        engine = self._engine(steps_per_epoch * rc.epochs)
        accs: list[float] = []
        versions: list[int] = []
        losses: list[float] = []
        t_eval = 0.0
        for _ in range(rc.epochs):
            losses.append(await asyncio.to_thread(self._epoch, engine, rows))
            await self.push(engine.module, self.version + 1)
            res = await self.validate()
            t_eval += res["time/eval"]
            accs.append(res["acc/val"])
            versions.append(self.version)
            if select_checkpoint(accs) < len(accs) - 1:
                break  # validation dropped: the previous checkpoint is selected
        pick = select_checkpoint(accs)
        return {
            "acc/val": accs[pick],
            "time/eval": t_eval,
            "restem/selected_epoch": pick + 1,
            "restem/selected_version": versions[pick],
            "restem/epochs_run": len(accs),
            "loss/sft": losses[pick],
            "acc/val_epochs": accs,
        }

    def _engine(self, total_steps: int) -> Any:
        from services.trainer.runtime.distributed import wrap

        cfg, rc = self.cfg, self.cfg.restem
        return wrap(
            self._load_base(),
            lr=rc.lr,
            betas=cfg.optim.betas,
            weight_decay=cfg.optim.weight_decay,
            grad_clip=cfg.optim.grad_clip,
            zero_stage=cfg.dist.zero_stage,
            total_steps=total_steps,
            warmup_steps=math.ceil(cfg.optim.warmup_ratio * total_steps),
            micro_batch_size=rc.micro_batch_size,
            grad_accum_steps=rc.batch_size // (rc.micro_batch_size * self.info.world_size),
            bf16=self.precision.weights == torch.bfloat16,
        )

    def _epoch(self, engine: Any, rows: list[tuple[list[int], list[int]]]) -> float:
        """One shuffled pass (padded to whole batches by wrapping around); mean NLL."""
        rc, info = self.cfg.restem, self.info
        order = torch.randperm(len(rows), generator=self.gen).tolist()
        n = math.ceil(len(order) / rc.batch_size) * rc.batch_size
        order = [order[i % len(order)] for i in range(n)]
        engine.train()
        losses = []
        for start in range(0, n, rc.batch_size):
            mine = order[start : start + rc.batch_size][info.rank :: info.world_size]
            for m in range(0, len(mine), rc.micro_batch_size):
                part = [rows[i] for i in mine[m : m + rc.micro_batch_size]]
                padded = collate(part, self.tokenizer.pad_token_id)
                batch = {k: v.to(info.device) for k, v in padded.items()}
                loss = engine(**batch).loss  # mean NLL over response tokens
                engine.backward(loss)
                engine.step()
                losses.append(float(loss.detach()))
        return sum(losses) / len(losses)
