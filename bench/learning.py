"""VinePPO vs PPO on the demo's task and SFT model, several seeds, or the LR/KL sweep.

    .venv/bin/python -m bench.learning --seeds 0,1,2                 # docs/benchmarks/learning.md

Seeds may run as parallel processes (``--seeds 0`` & ``--seeds 1`` & ...): each saves its
results in ``<out>/seed<s>/bench.json``, and ``--seeds 0,1,2`` then only reports.
    .venv/bin/python -m bench.learning --sweep --algos ppo --iterations 16  # learning_sweep_ppo.md

Each run is the demo's (`services.demo.run`): same SFT model, budget per iteration and
per-method LR/KL (`DEMO_RL`). Per method it reports test Pass@1 (mean over seeds, each seed's
standard error over problems), validation Pass@1 and train reward per iteration (mean curve
with the min–max band over seeds), the iteration and wall-clock at which VinePPO first reaches
PPO's best validation accuracy, and the value MAE of VinePPO's MC estimate vs PPO's critic.
The sweep trains each method once per (lr, kl_coef) on seed 0 and ranks them by validation.
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
NAMES = {"ppo": "PPO", "vine": "VinePPO", "grpo": "GRPO", "rloo": "RLOO"}


def curves(rows: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Per iteration: validation Pass@1 (``val``), train reward (``reward``), cumulative
    seconds of training and validation (``clock``) and KL to π_ref (``kl``)."""
    out: dict[str, dict[int, float]] = {"val": {}, "reward": {}, "clock": {0: 0.0}, "kl": {}}
    clock = 0.0
    for r in rows:
        it = int(r["iteration"])
        clock += float(r.get("time/iteration", 0.0)) + float(r.get("time/eval", 0.0))
        out["clock"][it] = clock
        if "acc/val" in r:
            out["val"][it] = float(r["acc/val"])
        if "reward/mean" in r:
            out["reward"][it] = float(r["reward/mean"])
            out["kl"][it] = float(r.get("kl/ref", 0.0))
    return out


def band(series: list[dict[int, float]]) -> dict[int, tuple[float, float, float]]:
    """iteration -> (mean, min, max) over the runs that all have that iteration."""
    its = sorted(set.intersection(*(set(s) for s in series)))
    return {i: (statistics.mean(s[i] for s in series), min(s[i] for s in series),
                max(s[i] for s in series)) for i in its}  # fmt: skip


def first_reach(curve: dict[int, tuple[float, float, float]], target: float) -> int | None:
    return next((i for i in sorted(curve) if i > 0 and curve[i][0] >= target - 1e-9), None)


def run_one(
    algo: str, seed: int, out: Path, budget: Any, model: Path, sft_acc: dict[str, float],
    rl: dict[str, Any] | None = None, test: bool = True,
) -> dict[str, Any]:  # fmt: skip
    from services.demo.run import run_config, train_and_test
    from services.trainer.evaluation.report import load_run

    cfg = run_config(algo, model, out, budget, seed, rl)
    res = asyncio.run(train_and_test(cfg, budget, None, sft_acc, test=test))
    res["curves"] = curves(load_run(out / algo).rows)
    res["seed"] = seed
    print(json.dumps({k: v for k, v in res.items() if k != "curves"}), flush=True)
    return res


def sweep(args: argparse.Namespace, budget: Any, model: Path) -> None:
    if args.pairs:  # explicit (lr, kl) points instead of the grid
        points = [(float(p.split(":")[0]), float(p.split(":")[1])) for p in args.pairs.split(",")]
    else:
        points = [(float(lr), float(kl))
                  for lr in args.lrs.split(",") for kl in args.kls.split(",")]  # fmt: skip
    grid = args.pairs or f"--lrs {args.lrs} --kls {args.kls}"
    lines = ["# LR / KL sweep on the demo task (seed 0)", "",
             f"Command: `.venv/bin/python -m bench.learning --sweep --algos {args.algos} "
             f"--iterations {args.iterations} --eval-every {budget.eval_every} "
             f"{'--pairs ' + grid if args.pairs else grid}` (a run whose metrics are complete "
             "in --out is reused, not retrained)", "",
             f"{machine()}. Each run: {budget.iterations} iterations × {budget.prompts} prompts "
             f"× {budget.responses} responses; validation Pass@1 on {budget.val_problems} "
             f"problems × {budget.val_seeds} samples (T = 0.35) every {budget.eval_every} "
             "iterations. Ranked by the best validation Pass@1 (the test split is not used "
             "to choose).", "",
             "| method | lr | kl_coef | best val Pass@1 (iteration) | final val Pass@1 | "
             "train reward, first → last 3 | KL at the end |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for algo in args.algos.split(","):
        for lr, kl in points:
            out = args.out / "sweep" / f"lr{lr:g}-kl{kl:g}"
            if _complete(out / algo, budget.iterations):
                from services.trainer.evaluation.report import load_run

                res = {"curves": curves(load_run(out / algo).rows)}
            else:
                res = run_one(algo, 0, out, budget, model, {},
                              {"optim.lr": lr, "ppo.kl_coef": kl}, test=False)  # fmt: skip
            c = res["curves"]
            best = max((i for i in c["val"] if i > 0), key=lambda i: c["val"][i])
            last = sorted(c["reward"])[-3:]
            lines.append(
                f"| {NAMES[algo]} | {lr:g} | {kl:g} | {c['val'][best]:.3f} ({best}) | "
                f"{c['val'][max(c['val'])]:.3f} | {c['reward'][min(c['reward'])]:.3f} → "
                f"{statistics.mean(c['reward'][i] for i in last):.3f} | "
                f"{c['kl'][max(c['kl'])]:.4f} |"
            )
            print(lines[-1], flush=True)
    write_doc(DOCS / f"learning_sweep_{args.algos.replace(',', '_')}.md", lines)


def _complete(run_dir: Path, iterations: int) -> bool:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return bool(rows) and rows[-1]["iteration"] == iterations and "acc/val" in rows[-1]


def machine() -> str:
    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, 1 torch thread, "
            f"load average {os.getloadavg()[0]:.1f} at the end")  # fmt: skip


def write_doc(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    path.write_text(text)


def main() -> None:
    from services.demo.run import BUDGETS, sft_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--algos", default="ppo,vine")
    ap.add_argument("--iterations", type=int, default=None, help="Default: the demo's.")
    ap.add_argument("--eval-every", type=int, default=None, help="Default: the demo's.")
    ap.add_argument("--sweep", action="store_true", help="The LR × KL sweep on seed 0.")
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    ap.add_argument("--kls", default="1e-4")
    ap.add_argument("--pairs", default="", help="lr:kl points, e.g. 1e-4:1e-4,3e-4:1e-3.")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "learning")
    args = ap.parse_args()
    budget = BUDGETS["full"]
    if args.iterations:
        budget = dataclasses.replace(budget, iterations=args.iterations)
    if args.eval_every:
        budget = dataclasses.replace(budget, eval_every=args.eval_every)
    args.iterations = budget.iterations
    model = sft_model(args.out, budget, retrain=False)
    start = time.monotonic()
    if args.sweep:
        return sweep(args, budget, model)
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in args.algos.split(",")}
    sft: list[dict[str, float]] = []
    maes: dict[str, list[float]] = {"ppo": [], "vine": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        seed_results, sft_acc, mae = run_seed(seed, args, budget, model, list(results))
        for algo, res in seed_results.items():
            results[algo].append(res)
        sft.append(sft_acc)
        for k, v in mae.items():
            maes[k].append(v)
    report(args, budget, results, sft, maes, time.monotonic() - start)


def run_seed(
    seed: int, args: argparse.Namespace, budget: Any, model: Path, algos: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, float], dict[str, float]]:
    """One seed of every method (+ value MAE), or what an earlier invocation saved in
    ``out/seed<s>/bench.json`` (so seeds can run as parallel processes, then be reported)."""
    from services.demo.run import value_mae

    out = args.out / f"seed{seed}"
    saved = out / "bench.json"
    if saved.is_file():
        doc = json.loads(saved.read_text())
        if set(algos) <= set(doc["results"]):
            for res in doc["results"].values():  # JSON keys are strings: iterations back
                res["curves"] = {k: {int(i): v for i, v in c.items()}
                                 for k, c in res["curves"].items()}  # fmt: skip
            return doc["results"], doc["sft"], doc["mae"]
    sft_acc: dict[str, float] = {}
    results = {algo: run_one(algo, seed, out, budget, model, sft_acc) for algo in algos}
    mae = value_mae(out, budget, _cfg("ppo", model, out, budget, seed)) if "ppo" in algos else {}
    saved.write_text(json.dumps({"results": results, "sft": sft_acc, "mae": mae}))
    return results, sft_acc, mae


def _cfg(algo: str, model: Path, out: Path, budget: Any, seed: int) -> Any:
    from services.demo.run import run_config

    return run_config(algo, model, out, budget, seed)


def report(
    args: argparse.Namespace, budget: Any, results: dict[str, list[dict[str, Any]]],
    sft: list[dict[str, float]], maes: dict[str, list[float]], elapsed: float,
) -> None:  # fmt: skip
    from bench.learning_plot import plot
    from services.demo.run import DEMO_RL

    val = {a: band([r["curves"]["val"] for r in rs]) for a, rs in results.items()}
    reward = {a: band([r["curves"]["reward"] for r in rs]) for a, rs in results.items()}
    clock = {a: band([r["curves"]["clock"] for r in rs]) for a, rs in results.items()}
    sft_mean = statistics.mean(s["test"] for s in sft)
    lines = ["# Learning benchmark: VinePPO vs PPO on the built-in task", "",
             f"Command: `.venv/bin/python -m bench.learning --seeds {args.seeds} "
             f"--algos {args.algos} --iterations {args.iterations}`", "",
             f"{machine()}; this invocation {elapsed / 60:.1f} min, RL training of all runs "
             f"{sum(r['wall-clock (s)'] for rs in results.values() for r in rs) / 60:.1f} min "
             "(seeds may have run as parallel processes).",
             f"Per run: {budget.iterations} iterations × {budget.prompts} prompts × "
             f"{budget.responses} responses (the same episode budget for every method), "
             f"VinePPO K = {budget.k}; LR and KL per method: {json.dumps(DEMO_RL)} "
             "(from the sweeps: [PPO](learning_sweep_ppo.md), "
             "[VinePPO](learning_sweep_vine.md)). Validation Pass@1 on "
             f"{budget.val_problems} problems × {budget.val_seeds} samples every "
             f"{budget.eval_every} iterations; test Pass@1 on {budget.test_problems} problems × "
             f"{budget.test_seeds} samples; both at T = 0.35. ± = standard error over problems "
             "(per seed) or standard deviation over seeds (as said).", "",
             "| method | test Pass@1, mean over seeds ± sd | per seed (± SE) | gain over SFT | "
             "best val Pass@1 (iteration) | wall-clock to it (s) |",
             "|---|---:|---|---:|---:|---:|",
             f"| SFT | {sft_mean:.3f} | " + ", ".join(f"{s['test']:.3f} ± {s['test SE']:.3f}"
                                                   for s in sft) + " | | | |"]  # fmt: skip
    for a, rs in results.items():
        accs = [r["test Pass@1"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        gains = [r["test Pass@1"] - s["test"] for r, s in zip(rs, sft, strict=True)]
        best = max((i for i in val[a] if i > 0), key=lambda i: val[a][i][0])
        lines.append(
            f"| {NAMES[a]} | {statistics.mean(accs):.3f} ± {sd:.3f} | "
            + ", ".join(f"{r['test Pass@1']:.3f} ± {r['test SE']:.3f}" for r in rs)
            + f" | {statistics.mean(gains):+.3f} (min {min(gains):+.3f}) | "
            f"{val[a][best][0]:.3f} ({best}) | {clock[a][best][0]:.0f} |"
        )
    if "ppo" in val and "vine" in val:
        lines += ["", speedup(val, clock)]
    if maes["vine"]:
        lines += ["", f"Value MAE against {budget.truth_k}-sample MC truth (states from the "
                  f"final PPO policy): VinePPO MC (K = {budget.k}) "
                  f"{statistics.mean(maes['vine']):.4f}, PPO critic "
                  f"{statistics.mean(maes.get('ppo') or [float('nan')]):.4f} (mean over seeds; "
                  "per step index in each run's value-analysis)."]  # fmt: skip
    lines += ["", *mae_by_step(args), "", *profile(args, list(results))]
    plot(val, reward, DOCS / "learning.png", {a: NAMES[a] for a in results})
    lines += ["", "![validation Pass@1 and train reward per iteration, mean and min–max band "
              "over seeds](learning.png)", "", "Train reward per iteration (mean over seeds): "
              + "; ".join(f"{NAMES[a]} " + " ".join(f"{reward[a][i][0]:.2f}"
                                                   for i in sorted(reward[a]))
                          for a in results)]  # fmt: skip
    write_doc(DOCS / "learning.md", lines)


def mae_by_step(args: argparse.Namespace) -> list[str]:
    """Value MAE per step index of every seed's value analysis (MC vs critic vs group)."""
    out = ["Value MAE by step index (each seed's value analysis):", "",
           "| seed | estimator | " + " | ".join(f"step {i}" for i in range(4)) + " |",
           "|---|---|" + "---:|" * 4]  # fmt: skip
    for seed in args.seeds.split(","):
        path = args.out / f"seed{seed}" / "ppo" / "value-analysis" / "analysis.json"
        if not path.is_file():
            continue
        for name, m in json.loads(path.read_text())["metrics"].items():
            by = m["mae_by_step"]
            out.append(f"| {seed} | {name} | "
                       + " | ".join(f"{by[str(i)]:.3f}" if str(i) in by else ""
                                    for i in range(4)) + " |")  # fmt: skip
    return out


def profile(args: argparse.Namespace, algos: list[str]) -> list[str]:
    """Where an iteration's seconds go, per method (mean over iterations and seeds)."""
    from services.trainer.evaluation.report import load_run

    keys = ("generate", "values", "train", "push", "iteration")
    out = ["Seconds per iteration (mean over iterations and seeds; `values` = MC rollouts for "
           "VinePPO, the critic's forward for PPO; `iteration` includes grading), and per "
           "validation of 256 × 4 samples:", "",
           "| method | " + " | ".join(keys) + " | validation |",
           "|---|" + "---:|" * (len(keys) + 1)]  # fmt: skip
    for a in algos:
        rows = [r for s in args.seeds.split(",")
                for r in load_run(args.out / f"seed{s}" / a).rows]  # fmt: skip
        cells = [statistics.mean(float(r[f"time/{k}"]) for r in rows if f"time/{k}" in r)
                 for k in (*keys, "eval")]  # fmt: skip
        out.append(f"| {NAMES[a]} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return out


def speedup(val: dict[str, Any], clock: dict[str, Any]) -> str:
    """Iterations and wall-clock VinePPO needs to reach PPO's best validation accuracy."""
    ppo, vine = val["ppo"], val["vine"]
    best = max((i for i in ppo if i > 0), key=lambda i: ppo[i][0])
    text = f"PPO's best validation Pass@1 (mean curve): {ppo[best][0]:.3f} at iteration {best} " \
           f"({clock['ppo'][best][0]:.0f} s). "  # fmt: skip
    reach = first_reach(vine, ppo[best][0])
    if reach is None:
        return text + "VinePPO's mean curve never reached it in this budget."
    return text + (f"VinePPO first reached it at iteration {reach} "
                   f"({clock['vine'][reach][0]:.0f} s): {reach / best:.2f}× the iterations, "
                   f"{clock['vine'][reach][0] / max(clock['ppo'][best][0], 1e-9):.2f}× the "
                   "wall-clock (targets ≤ 0.5× and ≤ 0.67×).")  # fmt: skip


if __name__ == "__main__":
    main()
