"""Training precision on CPU: seconds per AdamW step and whether a small update survives.

Three precisions of one model, each in its own process (so each peak RSS is its own):
``float32``; ``mixed`` (float32 master weights, forward and backward under bfloat16
autocast: what ``model.dtype=bfloat16`` trains in on a CPU with native bfloat16); and
``bfloat16`` (plain bfloat16 weights and AdamW state: shown for its speed and its flaw).
Each times full steps (forward, backward, AdamW) on ``--batch`` × ``--tokens`` random tokens
after one warm-up step, then counts the share of weights one step at lr 1e-6 (the paper's)
changes.

    .venv/bin/python -m bench.train_precision --model runs/smollm2

Prints a table and writes docs/benchmarks/train_precision.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.runs import DOCS, machine

MODES = ("float32", "mixed", "bfloat16")


def measure(model_dir: str, mode: str, batch: int, tokens: int, steps: int) -> dict[str, Any]:
    """One precision, in this process: step seconds, peak RSS, share of weights kept moving."""
    import torch

    from services.trainer.runtime.model import Precision, load_policy

    prec = {
        "float32": Precision(),
        "mixed": Precision(torch.float32, autocast=torch.bfloat16),
        "bfloat16": Precision(torch.bfloat16),
    }[mode]
    torch.manual_seed(0)
    model = load_policy(model_dir, "cpu", prec)
    model.train()
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, tokens))

    def step(lr: float) -> None:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    for _ in range(steps + 1):  # the first is a warm-up (allocations, oneDNN kernels)
        start = time.perf_counter()
        step(1e-5)
        times.append(time.perf_counter() - start)
    before = [p.detach().clone() for p in model.parameters()]
    step(1e-6)
    pairs = zip(model.parameters(), before, strict=True)
    moved = sum(int((p.detach() != b).sum()) for p, b in pairs)
    return {
        "mode": mode,
        "step_s": statistics.median(times[1:]),
        "steps_s": times[1:],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "moved_at_1e-6": moved / sum(b.numel() for b in before),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="A save_pretrained causal-LM directory.")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", type=Path, default=DOCS / "train_precision.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one mode, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.batch, args.tokens, args.steps)))
        return
    import torch

    from services.trainer.runtime.model import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    rows = []
    for mode in args.modes.split(","):
        if mode not in MODES:
            raise SystemExit(f"--modes: unknown mode {mode!r}; known: {', '.join(MODES)}")
        cmd = [sys.executable, "-m", "bench.train_precision", "--model", args.model,
               "--batch", str(args.batch), "--tokens", str(args.tokens),
               "--steps", str(args.steps), "--one", mode]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1])
    base = next((r["step_s"] for r in rows if r["mode"] == "float32"), None)
    lines = [
        "# Training precision on CPU",
        "",
        f"Command: `.venv/bin/python -m bench.train_precision --model {args.model} --batch "
        f"{args.batch} --tokens {args.tokens} --steps {args.steps}"
        + ("" if args.out == DOCS / "train_precision.md" else f" --out {args.out}")
        + "`",
        "",
        f"{machine(str(rows[0]['threads']) + ' torch threads')}; torch {torch.__version__}; native "
        f"bfloat16 on this CPU (oneDNN): **{'yes' if native else 'no'}**. One full step = "
        f"forward, backward and AdamW on {args.batch} × {args.tokens} random tokens (median "
        f"of {args.steps} after a warm-up); *moved* = share of the weights that one more "
        "AdamW step at lr 1e-6 changes (an update smaller than bfloat16's spacing is lost "
        "in plain bfloat16 weights).",
        "",
        "| precision | s / step | vs float32 | peak RSS (MB) | moved at lr 1e-6 |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {
        "float32": "float32",
        "mixed": "mixed: float32 master, bfloat16 autocast (`model.dtype=bfloat16`)",
        "bfloat16": "plain bfloat16 weights",
    }
    for r in rows:
        ratio = f"{r['step_s'] / base:.2f}×" if base else ""
        lines.append(
            f"| {names[r['mode']]} | {r['step_s']:.2f} | {ratio} | {r['peak_rss_mb']:.0f} | "
            f"{r['moved_at_1e-6']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(
        json.dumps({"native_bf16": native, "rows": rows}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
