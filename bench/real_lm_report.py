"""bench/real_lm.py's report: docs/benchmarks/real_lm.md from the runs' results and metrics
(test Pass@1 against SFT, the per-iteration profile, VinePPO / PPO time and memory at both
Ks, PPO's critic, the value analysis and the curves), and the K = 9 timing run's arguments."""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.runs import NAMES, curves, mean_band

PROFILE = ("generate", "values", "train", "push", "iteration")


def timing_args(args: argparse.Namespace) -> argparse.Namespace:
    """The VinePPO timing run's arguments: K = ``--timing-k`` for ``--timing-iterations``,
    in ``out/k<K>``, otherwise as the learning runs."""
    return argparse.Namespace(
        **{
            **vars(args),
            "k": args.timing_k,
            "iterations": args.timing_iterations,
            "out": args.out / f"k{args.timing_k}",
        }
    )


def profile(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean seconds per iteration of each phase (iterations 1..N)."""
    steps = [r for r in rows if r["iteration"] > 0]
    return {
        k: statistics.mean(float(r[f"time/{k}"]) for r in steps if f"time/{k}" in r)
        for k in PROFILE
        if any(f"time/{k}" in r for r in steps)
    }


def timing_lines(
    args: argparse.Namespace, ppo_profile: dict[str, float], ppo: dict[str, Any]
) -> list[str]:
    """The VinePPO / PPO ratios at ``--timing-k`` from the timing run, when there is one."""
    from services.trainer.evaluation.report import load_run

    t_args = timing_args(args)
    result = t_args.out / "vine" / "result.json"
    if not result.is_file():
        return []
    vine = profile(load_run(t_args.out / "vine").rows)
    rss = json.loads(result.read_text())["train peak RSS (MB)"]
    per = ", ".join(f"{k} {vine[k]:.1f} s" for k in PROFILE if k in vine)
    return [
        "",
        f"At K = {args.timing_k} ({args.timing_iterations} VinePPO iterations from the SFT "
        f"model, the same sizes; {per}): iteration time "
        f"{vine['iteration'] / ppo_profile['iteration']:.2f}× PPO's, trainer peak RSS "
        f"{rss / ppo['train peak RSS (MB)']:.2f}× PPO's.",
    ]


def machine_line(args: argparse.Namespace) -> str:
    """The machine as this benchmark depends on it: cores, CPU, native bfloat16, threads, and
    the pipeline's wall-clock from its first start (``out/started.txt``) to this report."""
    import datetime as dt
    import os
    import platform

    import torch

    from services.trainer.runtime.model import cpu_has_native_bf16

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [x.split(":", 1)[1].strip() for x in info.read_text().splitlines()
                 if x.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    started = args.out / "started.txt"
    done = [*args.out.glob("*/result.json"), *args.out.glob("*/*/result.json"),
            *args.out.glob("ppo/value-analysis/analysis.json")]  # fmt: skip
    wall = ""
    if started.is_file() and done:
        t0 = dt.datetime.fromisoformat(started.read_text().strip()).timestamp()
        minutes = (max(f.stat().st_mtime for f in done) - t0) / 60
        wall = f"; the whole pipeline took {minutes:.0f} min of wall-clock (start to last stage)"
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, no GPU, native bfloat16 (oneDNN): "
        f"{'yes' if cpu_has_native_bf16() else 'no'}; {torch.get_num_threads()} torch threads; "
        f"load average {os.getloadavg()[0]:.1f} at the end{wall}"
    )


def critic_line(rows: list[dict[str, Any]]) -> list[str]:
    """PPO's critic diagnostics over training: explained variance of the returns."""
    ev = [float(r["critic/ev_returns"]) for r in rows if "critic/ev_returns" in r]
    warm = next((r for r in rows if "critic/warmup_ev_last" in r), None)
    if not ev:
        return []
    text = (
        f"PPO's critic, explained variance of the returns it was trained on: mean "
        f"{statistics.mean(ev):.3f} over the {len(ev)} iterations, last {ev[-1]:.3f}"
    )
    if warm is not None:
        text += f" (after its warm-up: {float(warm['critic/warmup_ev_last']):.3f})"
    return ["", text + "."]


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def report(
    args: argparse.Namespace, results: dict[str, dict[str, Any]], vals: dict[str, Any]
) -> None:
    from bench.learning_plot import plot
    from services.trainer.evaluation.report import load_run

    rows = {a: load_run(args.out / a).rows for a in results}
    curve = {a: curves(r) for a, r in rows.items()}
    first = next(iter(results.values()))
    lines = [
        "# A real pretrained LM learns through the whole stack, on CPU (SmolLM2-135M-Instruct)",
        "",
        "Command: `" + shlex.join([".venv/bin/python", "-m", "bench.real_lm", *sys.argv[1:]]) + "`",
        "",
        f"{machine_line(args)}. SFT: {args.sft_steps} steps × {args.sft_batch} careless "
        f"solutions of 2–4-step problems (lr {args.sft_lr}). RL: {args.iterations} iterations × "
        f"{args.prompts} prompts × {args.responses} responses for every method, lr "
        f"{args.lr}, KL {args.kl}, VinePPO K = {args.k}, PPO's critic lr {args.critic_lr} "
        f"after {args.critic_warmup} value-only iterations (counted in its wall-clock), "
        f"`model.dtype={args.dtype}`, rollouts "
        f"and MC values on the `{args.engine}` engine, grading by the reward service. Test "
        f"Pass@1: {args.test_problems} problems × {args.test_seeds} samples at T = 0.35, ± its "
        "standard error over problems; the RL rows use the best-by-validation policy.",
        "",
        "| model | test Pass@1 | − SFT (in SEs) | training wall (s) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
        f"| SFT | {first['sft Pass@1']:.3f} ± {first['sft SE']:.3f} | | | |",
    ]
    for a, r in results.items():
        se = (r["test SE"] ** 2 + first["sft SE"] ** 2) ** 0.5
        lines.append(
            f"| {NAMES[a]} | {r['test Pass@1']:.3f} ± {r['test SE']:.3f} | "
            f"{(r['test Pass@1'] - first['sft Pass@1']) / max(se, 1e-9):+.1f} | "
            f"{r['wall-clock (s)']:.0f} | {r['train peak RSS (MB)']:.0f} |"
        )
    prof = {a: profile(r) for a, r in rows.items()}
    keys = [k for k in PROFILE if any(k in p for p in prof.values())]
    lines += [
        "",
        "Seconds per iteration (mean; `values` = MC rollouts for VinePPO, the critic's forward "
        "for PPO; `push` = saving the policy and the replicas loading it; `iteration` includes "
        "grading):",
        "",
        "| method | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
        *(
            f"| {NAMES[a]} | " + " | ".join(f"{p.get(k, 0.0):.1f}" for k in keys) + " |"
            for a, p in prof.items()
        ),
    ]
    if "vine" in results and "ppo" in results:
        t = prof["vine"]["iteration"] / prof["ppo"]["iteration"]
        m = results["vine"]["train peak RSS (MB)"] / results["ppo"]["train peak RSS (MB)"]
        lines += [
            "",
            f"VinePPO / PPO at K = {args.k}: iteration time {t:.2f}× (the paper's Table 4: "
            f"1.87–4.75× at K = 9 on GPUs), trainer peak RSS {m:.2f}× (no critic).",
        ]
        lines += timing_lines(args, prof["ppo"], results["ppo"])
    if "ppo" in rows:
        lines += critic_line(rows["ppo"])
    lines += [
        "",
        "Policy selected on validation (version = iterations done): "
        + ", ".join(f"{NAMES[a]} v{r['selected version']}" for a, r in results.items())
        + "; validation Pass@1 at each evaluation: "
        + "; ".join(
            f"{NAMES[a]} " + ", ".join(f"{v[0]:.2f}" for _, v in sorted(c["val"].items()))
            for a, c in ((a, {"val": mean_band([curve[a]["val"]])}) for a in results)
        )
        + ".",
    ]
    if vals:
        lines += [
            "",
            f"Values on real reasoning steps (states of {args.value_prompts} test prompts "
            f"sampled from the final PPO policy, truth = {args.truth_k} MC samples):",
            "",
            "| estimator | MAE | explained variance | states |",
            "|---|---:|---:|---:|",
            *(
                f"| {name} | {m['mae']:.3f} | {_num(m['explained_variance'])} | {m['num_states']} |"
                for name, m in vals.items()
            ),
        ]
    png = args.doc.with_suffix(".png")
    val = {a: mean_band([c["val"]]) for a, c in curve.items()}
    reward = {a: mean_band([c["reward"]]) for a, c in curve.items()}
    plot(val, reward, png, NAMES)
    lines += ["", f"![validation Pass@1 and train reward]({png.name})"]
    text = "\n".join(lines) + "\n"
    print(text)
    args.doc.write_text(text)
