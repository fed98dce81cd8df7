"""VinePPO vs PPO (and GRPO/RLOO with --algos) on the built-in task, several seeds.

    .venv/bin/python -m bench.learning --seeds 0,1,2 --iterations 24 --out runs/learning

Uses the demo's task, SFT model (built once, reused) and budget per iteration. Reports per
method: the validation Pass@1 curve (mean over seeds), the iteration and wall-clock at which
VinePPO first reaches PPO's peak, final test Pass@1 mean ± sd, KL at equal accuracy, and the
value MAE of VinePPO's MC estimate vs PPO's critic against ground-truth MC values. Writes
docs/benchmarks/learning.md and docs/benchmarks/learning.png.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"


def curve(rows: list[dict[str, Any]]) -> dict[int, tuple[float, float, float]]:
    """iteration -> (acc/val, cumulative seconds, kl/ref) for rows that have acc/val."""
    out, clock = {}, 0.0
    for r in rows:
        clock += float(r.get("time/iteration", 0.0)) + float(r.get("time/eval", 0.0))
        if "acc/val" in r:
            out[int(r["iteration"])] = (float(r["acc/val"]), clock, float(r.get("kl/ref", 0.0)))
    return out


def mean_curve(curves: list[dict[int, tuple[float, float, float]]]) -> dict[int, list[float]]:
    its = sorted(set.intersection(*(set(c) for c in curves)))
    return {i: [statistics.mean(c[i][j] for c in curves) for j in range(3)] for i in its}


def first_reach(mc: dict[int, list[float]], target: float) -> int | None:
    return next((i for i in sorted(mc) if i > 0 and mc[i][0] >= target), None)


def main() -> None:
    from services.trainer.demo import BUDGETS, run_config, sft_model, train_and_test, value_mae
    from services.trainer.report import load_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--algos", default="ppo,vine")
    ap.add_argument("--iterations", type=int, default=24)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "learning")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    algos = args.algos.split(",")
    budget = dataclasses.replace(BUDGETS["full"], iterations=args.iterations)
    model = sft_model(args.out, budget, retrain=False)
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in algos}
    maes: dict[str, list[float]] = {"ppo": [], "vine": []}
    start = time.monotonic()
    for seed in seeds:
        out = args.out / f"seed{seed}"
        sft_acc: dict[str, float] = {}
        for algo in algos:
            cfg = run_config(algo, model, out, budget, seed)
            res = asyncio.run(train_and_test(cfg, budget, None, sft_acc))
            res["curve"] = curve(load_run(out / algo).rows)
            results[algo].append(res)
        if "ppo" in algos:
            for k, v in value_mae(out, budget, run_config("ppo", model, out, budget, seed)).items():
                maes[k].append(v)
    write(args, results, maes, budget, time.monotonic() - start)


def write(args: Any, results: dict[str, list[dict[str, Any]]], maes: dict[str, list[float]],
          budget: Any, elapsed: float) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {a: mean_curve([r["curve"] for r in rs]) for a, rs in results.items()}
    lines = ["# Learning benchmark: VinePPO vs PPO on the built-in task", "",
             f"Command: `.venv/bin/python -m bench.learning --seeds {args.seeds} "
             f"--algos {args.algos} --iterations {args.iterations}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, 1 torch thread; "
             f"total {elapsed / 60:.1f} min; load average {os.getloadavg()[0]:.1f} at the end.",
             f"Budget per run: {budget.iterations} iterations × {budget.prompts} prompts × "
             f"{budget.responses} responses, VinePPO K = {budget.k}; validation Pass@1 on "
             f"{budget.val_problems} problems every {budget.eval_every} iterations (1 sample, "
             f"T = 0.35); test Pass@1 on {budget.test_problems} problems.", "",
             "| method | final test Pass@1 (mean ± sd) | peak val Pass@1 (mean curve) | "
             "iteration of peak | wall-clock to peak (s) |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for a, rs in results.items():
        accs = [r["test Pass@1"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        mc = curves[a]
        peak_it = max((i for i in mc if i > 0), key=lambda i: mc[i][0])
        lines.append(f"| {a} | {statistics.mean(accs):.3f} ± {sd:.3f} | {mc[peak_it][0]:.3f} | "
                     f"{peak_it} | {mc[peak_it][1]:.0f} |")  # fmt: skip
    if "ppo" in curves and "vine" in curves:
        ppo, vine = curves["ppo"], curves["vine"]
        peak_it = max((i for i in ppo if i > 0), key=lambda i: ppo[i][0])
        target = ppo[peak_it][0]
        reach = first_reach(vine, target)
        lines += ["", f"PPO's peak (mean curve): {target:.3f} at iteration {peak_it} "
                  f"({ppo[peak_it][1]:.0f} s). "]  # fmt: skip
        if reach is None:
            lines[-1] += "VinePPO's mean curve never reached it in this budget."
        else:
            lines[-1] += (f"VinePPO first reached it at iteration {reach} "
                          f"({vine[reach][1]:.0f} s): "
                          f"{reach / peak_it:.2f}× the iterations, "
                          f"{vine[reach][1] / max(ppo[peak_it][1], 1e-9):.2f}× the wall-clock "
                          f"(target ≤ 0.33× and ≤ 0.5×). KL at that accuracy: VinePPO "
                          f"{vine[reach][2]:.4f}, PPO {ppo[peak_it][2]:.4f}.")  # fmt: skip
    if maes["vine"]:
        lines += ["", "Value MAE against ground truth "
                  f"({budget.truth_k} MC samples per state, states from the final PPO policies): "
                  f"VinePPO MC (K = {budget.k}) {statistics.mean(maes['vine']):.4f}, "
                  f"PPO critic {statistics.mean(maes['ppo']):.4f} (mean over seeds)."]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    for a, mc in curves.items():
        its = sorted(mc)
        ax.plot(its, [mc[i][0] for i in its], marker="o", label=a)
    ax.set_xlabel("RL iteration")
    ax.set_ylabel("validation Pass@1 (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "learning.png")
    lines += ["", "![validation Pass@1 per iteration](learning.png)", "",
              "Per-seed results: " + json.dumps({a: [round(r["test Pass@1"], 3) for r in rs]
                                                 for a, rs in results.items()})]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    (DOCS / "learning.md").write_text(text)


if __name__ == "__main__":
    main()
