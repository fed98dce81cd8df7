"""Peak trainer memory of VinePPO (no critic) vs PPO (critic + its optimizer) on one model.

Each method runs ``--iterations`` RL iterations in its own process (``vineppo train``), so
each peak RSS is that run's alone; the rollout worker runs in the same process for both, so
the difference is the critic, its AdamW state and its activations.

    .venv/bin/python bench/trainer_memory.py --preset small --iterations 2

Prints a table and writes docs/benchmarks/trainer_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_model(out: Path, preset: str) -> Path:
    from services.trainer.runtime.model import build_tiny_model
    from shared.datasets import load_examples
    from shared.prompts import format_prompt

    texts = [format_prompt(e.question) + e.solution for e in load_examples("arithmetic", "train")]
    return build_tiny_model(out / "model", texts[:2000], preset=preset)


def run(algo: str, model: Path, out: Path, iterations: int) -> dict[str, float]:
    sets = [
        f"model.policy={model}",
        f"iterations={iterations}",
        "eval.every=1000",
        "eval.num_problems=4",
        "rollout.max_response_tokens=64",
        "vine.k=3",
    ]
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "train",
        "--algo",
        algo,
        "--preset",
        "tiny-cpu",
        "--output-dir",
        str(out / algo),
        "--threads",
        "1",
    ]
    for s in sets:
        cmd += ["--set", s]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "RANK", "WORLD_SIZE")}
    subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=ROOT)
    rows = [json.loads(x) for x in (out / algo / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["iteration"] > 0]
    return {
        "peak_mb": max(r["mem/peak_mb"] for r in steps),
        "time_s": sum(r["time/iteration"] for r in steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", help="model size preset (micro|tiny|small)")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "trainer_memory.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = build_model(Path(d), args.preset)
        results = {algo: run(algo, model, Path(d), args.iterations) for algo in ("vine", "ppo")}
    lines = [
        "# Peak trainer memory: VinePPO vs PPO",
        "",
        f"Command: `.venv/bin/python bench/trainer_memory.py --preset {args.preset} "
        f"--iterations {args.iterations}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"CPU, 1 thread; load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| method | peak RSS (MB) | RL time (s) |",
        "|---|---:|---:|",
        *(f"| {a} | {r['peak_mb']:.0f} | {r['time_s']:.1f} |" for a, r in results.items()),
        "",
        f"PPO / VinePPO peak memory: {results['ppo']['peak_mb'] / results['vine']['peak_mb']:.2f}×",
        "(peak RSS of the whole trainer process, which also holds the reference model and one",
        "in-process rollout worker; PPO adds the critic, its optimizer state and activations).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
