"""Supervised finetuning on gold solutions: makes π_ref for the RL runs.

Loss on response tokens only (prompt tokens are masked out); validation accuracy by greedy
decoding + the grader, on the fixed validation split every RL run validates on too
(``shared.datasets.SPLIT_SEED``: independent of ``seed``); the best checkpoint by validation
accuracy is kept in ``output_dir/best`` (model + tokenizer, save_pretrained/safetensors); one
JSONL line per evaluation in ``output_dir/metrics.jsonl``. DeepSpeed wraps the model (see
distributed.py).
Run: ``vineppo sft --preset tiny-cpu --output-dir runs/sft`` (builds the tiny model first).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from services.trainer.sft.config import SFTConfig
from shared.example import Example

IGNORE = -100


@dataclass
class SFTResult:
    best_dir: Path
    best_accuracy: float
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)


def score(response: str, example: Example) -> float:
    """1.0 when ``response``'s final answer matches the gold (the reward service's grader)."""
    try:
        from services.reward.grading import grade
    except ImportError:  # grader not installed: compare the text after '####'
        from shared.example import gsm8k_answer

        return float(gsm8k_answer(response) == example.answer)
    return float(grade(response, example.answer, example.dataset).reward)


def prompt_for(tokenizer: Any, ex: Example) -> str:
    """The prompt the RL loop will use too: chat template for instruct tokenizers, else plain."""
    from shared.prompts import format_prompt, style_for

    return format_prompt(
        ex.question, style=style_for(tokenizer), dataset=ex.dataset, tokenizer=tokenizer
    )


def encode_example(tokenizer: Any, ex: Example, max_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels): BOS + prompt + solution + EOS; labels −100 on the prompt."""
    prompt = tokenizer(prompt_for(tokenizer, ex))["input_ids"]
    response = tokenizer(ex.solution, add_special_tokens=False)["input_ids"]
    response = [*response, tokenizer.eos_token_id]
    ids = (prompt + response)[:max_len]
    labels = ([IGNORE] * len(prompt) + response)[:max_len]
    return ids, labels


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels (B, T)."""
    t = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = (
            torch.tensor(x),
            torch.tensor(y),
            1,
        )
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def greedy_accuracy(
    model: Any, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int, batch_size: int
) -> float:
    """Pass@1 of greedy decoding on ``examples`` (graded by `score`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    correct = 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        enc = tokenizer(
            [prompt_for(tokenizer, e) for e in chunk], return_tensors="pt", padding=True
        ).to(device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(
            out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        correct += sum(score(text, ex) for text, ex in zip(texts, chunk, strict=True))
    model.train(was_training)
    return correct / max(1, len(examples))


def prepare_model(cfg: SFTConfig, train: Sequence[Example]) -> Path:
    """The model dir to finetune: ``cfg.model``, or a tiny model built from the task's text."""
    if not cfg.from_scratch:
        if not cfg.model:
            raise ValueError("set model (a save_pretrained directory) or from_scratch=true")
        return Path(cfg.model)
    from services.trainer.runtime.model import build_tiny_model
    from shared.prompts import format_prompt

    texts = [format_prompt(e.question) + e.solution for e in train]
    return build_tiny_model(
        Path(cfg.output_dir) / "init", texts, preset=cfg.model_preset, seed=cfg.seed
    )


def _examples(cfg: SFTConfig, split: str, n: int | None, data_dir: Path | None) -> list[Example]:
    """``split`` of the dataset; the built-in task honours ``cfg.arithmetic``."""
    from shared.datasets import load_examples

    return load_examples(
        cfg.dataset, split, data_dir=data_dir, seed=cfg.seed, n=n, arithmetic=cfg.arithmetic
    )


def _with_slips(train: list[Example], cfg: SFTConfig) -> list[Example]:
    """The SFT targets with seeded off-by-one slips (the built-in task only)."""
    import dataclasses
    import random

    from shared.tasks.arithmetic import with_slips

    if cfg.dataset != "arithmetic":
        raise ValueError("slip_rate applies to the built-in arithmetic task only")
    rng = random.Random(f"slips/{cfg.seed}")
    return [
        dataclasses.replace(e, solution=with_slips(e.solution, cfg.slip_rate, rng)) for e in train
    ]


def _budget_spent(budget_s: float | None, start: float) -> bool:
    """True once the time budget is spent; rank 0's clock decides for every rank."""
    if budget_s is None:
        return False
    flag = torch.tensor([float(time.monotonic() - start > budget_s)])
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def _log(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def run_sft(cfg: SFTConfig, *, data_dir: Path | None = None, progress: bool = True) -> SFTResult:
    """Finetune per ``cfg``; returns where the best checkpoint is and its validation accuracy."""
    from services.trainer.runtime.distributed import init_distributed, is_main, wrap
    from services.trainer.runtime.model import load_policy, load_tokenizer, precision

    info = init_distributed()
    torch.manual_seed(cfg.seed)
    train = _examples(cfg, "train", cfg.train_problems, data_dir)
    if cfg.slip_rate:
        train = _with_slips(train, cfg)
    val = _examples(cfg, "validation", cfg.val_problems, data_dir)
    model_dir = prepare_model(cfg, train)
    tokenizer = load_tokenizer(model_dir)
    prec = precision(cfg.dtype, info.device)
    model = load_policy(model_dir, info.device, prec)
    rows = [encode_example(tokenizer, ex, cfg.max_seq_len) for ex in train]

    steps_per_epoch = max(1, len(rows) // cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by world size {info.world_size}")
    start = time.monotonic()

    def schedule_step(step: int) -> int:  # with a time budget, the LR decays over the budget
        if cfg.time_budget_s is None or info.world_size > 1:  # ranks must agree on the LR
            return step
        return max(step, int(total * (time.monotonic() - start) / cfg.time_budget_s))

    engine = wrap(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        zero_stage=cfg.zero_stage,
        total_steps=total,
        warmup_steps=math.ceil(cfg.warmup_ratio * total),
        micro_batch_size=cfg.batch_size // info.world_size,
        schedule_step=schedule_step,
        bf16=prec.weights == torch.bfloat16,  # DeepSpeed's bf16 mode (CUDA only)
    )
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path, best_dir = out / "metrics.jsonl", out / "best"
    result = SFTResult(best_dir=best_dir, best_accuracy=-1.0, steps=0)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(total=total, desc="sft", disable=not (progress and is_main()))
    for step in range(1, total + 1):
        if len(order) < cfg.batch_size:  # 1) next epoch: a fresh seeded permutation
            order += torch.randperm(len(rows), generator=gen).tolist()
        batch_ids, order = order[: cfg.batch_size], order[cfg.batch_size :]
        mine = batch_ids[info.rank :: info.world_size]  # 2) this rank's share
        padded = collate([rows[i] for i in mine], tokenizer.pad_token_id)
        batch = {k: v.to(info.device) for k, v in padded.items()}
        loss = engine(**batch).loss  # 3) mean NLL over response tokens
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        timed_out = _budget_spent(cfg.time_budget_s, start)
        if step % cfg.eval_every == 0 or step == total or timed_out:  # 4) evaluate, keep best
            _evaluate(engine, tokenizer, val, cfg, step, losses, start, result, metrics_path)
            losses = []
        result.steps = step
        if timed_out:
            break
    bar.close()
    return result


def _evaluate(
    engine: Any,
    tokenizer: Any,
    val: Sequence[Example],
    cfg: SFTConfig,
    step: int,
    losses: list[float],
    start: float,
    result: SFTResult,
    metrics_path: Path,
) -> None:
    from services.trainer.runtime.distributed import barrier, gathered_params, is_main

    with gathered_params(engine.module, cfg.zero_stage):  # ZeRO-3: whole weights for decoding
        acc = greedy_accuracy(
            engine.module, tokenizer, val, cfg.eval_max_tokens, cfg.eval_batch_size
        )
        if is_main() and acc > result.best_accuracy:
            engine.module.save_pretrained(result.best_dir, safe_serialization=True)
            tokenizer.save_pretrained(result.best_dir)
    row = {
        "step": step,
        "loss/sft": sum(losses) / max(1, len(losses)),
        "acc/val": acc,
        "lr": engine.get_lr()[0],
        "time/elapsed": time.monotonic() - start,
        "time/cpu": time.process_time(),
    }
    result.history.append(row)
    if is_main():
        _log(metrics_path, row)
    result.best_accuracy = max(result.best_accuracy, acc)
    barrier()
