"""How much data does PPO's critic need on the built-in task? An offline fit.

    .venv/bin/python -m bench.critic_fit --episodes 8192 --lrs 1e-4,3e-4,1e-3

Samples ``--episodes`` responses of the demo's SFT policy (T = 0.6, 4 per training prompt)
through the real services, holds out 512 of them, and fits a fresh critic (the SFT model's
body, a head starting at V = 0.5) to the returns with the PPO value loss's regression (½ MSE
against R on every response token; mini-batches of 32, AdamW, grad-norm clip 1, no value clip:
nothing to clip against offline), one pass after another. After every pass it reports the
held-out explained variance of the returns over response tokens and at the last response
token (where the whole answer is visible), and the train loss. The RL runs give the critic
16 × 64 = 1,024 episodes (+ 512 with value warm-up); this shows what many times that buys.
Writes docs/benchmarks/critic_fit.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import torch

from bench.runs import DOCS, RUNS, machine, write_doc

HELD_OUT = 512
BATCH = 32


def sample_episodes(model: Path, n: int, seed: int = 0) -> list[Any]:
    """``n`` graded episodes of ``model`` on training prompts of band 2-4 (4 per prompt)."""
    from services.trainer.client.jobs import JobOptions, run_generate_jobs
    from services.trainer.client.local_services import run_services
    from services.trainer.data.episodes import build_episodes
    from services.trainer.runtime.model import load_tokenizer
    from shared.datasets import load_examples
    from shared.prompts import format_prompt
    from shared.schemas import GradeItem, SamplingParams

    tok = load_tokenizer(model)
    examples = load_examples(
        "arithmetic", "train", n=n // 4, seed=seed, arithmetic={"min_steps": 2, "max_steps": 4}
    )
    prompts = [format_prompt(e.question) for e in examples]

    async def run() -> tuple[Any, Any]:
        async with run_services(
            model, RUNS / "critic_fit" / "policies", job_size=32, max_batch=128
        ) as s:
            outs = await run_generate_jobs(
                s.queue,
                prompts,
                version=0,
                n=4,
                options=JobOptions(desc="sample"),
                sampling=SamplingParams(temperature=0.6, max_tokens=96, seed=seed + 5),
            )
            items = [
                GradeItem(response=c.text, gold=e.answer, dataset="gsm8k")
                for e, per in zip(examples, outs, strict=True)
                for c in per
            ]
            return outs, await s.grader.grade(items)

    outs, verdicts = asyncio.run(run())
    return build_episodes(examples, prompts, outs, verdicts, tok, "gsm8k")


def fit(model: Path, episodes: list[Any], lr: float, passes: int) -> list[dict[str, float]]:
    """Fit a fresh critic on all but the last `HELD_OUT` episodes; one row per pass."""
    from services.trainer.data.episodes import collate
    from services.trainer.evaluation.analysis import explained_variance
    from services.trainer.runtime.model import Critic, load_tokenizer

    pad = int(load_tokenizer(model).pad_token_id)
    train, held = episodes[:-HELD_OUT], collate(episodes[-HELD_OUT:], pad)
    torch.manual_seed(0)
    critic = Critic.from_pretrained(model, init=0.5)
    opt = torch.optim.AdamW(critic.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, float]] = []
    start = time.process_time()
    for p in range(1, passes + 1):
        losses = []
        order = torch.randperm(len(train), generator=gen).tolist()
        for i in range(0, len(train) - BATCH + 1, BATCH):
            b = collate([train[j] for j in order[i : i + BATCH]], pad)
            values = critic(b.input_ids, b.attention_mask)[:, :-1]  # (b, L-1)
            err = (values - b.rewards[:, None]) ** 2 * b.response_mask
            loss = 0.5 * err.sum() / b.response_mask.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
            opt.step()
            losses.append(float(loss))
        with torch.no_grad():
            values = critic(held.input_ids, held.attention_mask)[:, :-1]
            sel = held.response_mask.bool()
            returns = held.rewards[:, None].expand_as(values)
            last = held.response_mask.cumsum(1).argmax(1)  # (B,) last response action
            rows.append(
                {
                    "pass": p,
                    "episodes seen": p * len(train),
                    "lr": lr,
                    "train loss": sum(losses) / len(losses),
                    "held-out EV (tokens)": explained_variance(values[sel], returns[sel]),
                    "held-out EV (last token)": explained_variance(
                        values[torch.arange(held.size), last], held.rewards
                    ),
                    "CPU s": time.process_time() - start,
                }
            )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    from services.demo.run import committed_sft

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8192)
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    ap.add_argument("--passes", type=int, default=4)
    args = ap.parse_args()
    model = committed_sft()
    episodes = sample_episodes(model, args.episodes)
    mean_r = sum(e.reward for e in episodes) / len(episodes)
    lines = [
        "# PPO's critic, fitted offline on the SFT policy's episodes",
        "",
        f"Command: `.venv/bin/python -m bench.critic_fit --episodes {args.episodes} "
        f"--lrs {args.lrs} --passes {args.passes}`",
        "",
        f"{machine()}. {len(episodes)} episodes of the demo's SFT model (band 2-4, "
        f"T = 0.6, mean reward {mean_r:.3f}), the last {HELD_OUT} held out; a fresh critic "
        f"(SFT body, head at V = 0.5) per learning rate, mini-batches of {BATCH}. EV = "
        "explained variance of the returns (1 = perfect, 0 = no better than the mean).",
        "",
        "| lr | pass | episodes seen | train loss | held-out EV, tokens | held-out EV, last "
        "token | CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lr in (float(x) for x in args.lrs.split(",")):
        for r in fit(model, episodes, lr, args.passes):
            lines.append(
                f"| {lr:g} | {r['pass']:.0f} | {r['episodes seen']:,.0f} | "
                f"{r['train loss']:.4f} | {r['held-out EV (tokens)']:.3f} | "
                f"{r['held-out EV (last token)']:.3f} | {r['CPU s']:.0f} |"
            )
    write_doc(DOCS / "critic_fit.md", lines)


if __name__ == "__main__":
    main()
