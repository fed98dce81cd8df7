"""VinePPO with fixed K against ``vine.reuse_returns``: MC cost and learning, several seeds.

    .venv/bin/python -m bench.reuse_returns --seeds 0,1,2   # docs/benchmarks/reuse_returns.md

Both variants are the learning benchmark's VinePPO run (the demo's SFT model and budget,
band 2-4, K = 3, 16 prompts × 4 responses, `DEMO_RL`'s learning rate and KL); the fixed-K run
*is* ``bench.learning``'s (``runs/learning/2-4/seed<s>/vine``, reused when finished), the
reuse run differs only in ``vine.reuse_returns=true`` (``runs/reuse_returns/seed<s>/vine``).
Seeds may run as parallel processes (``--seeds 0 --variants reuse`` & ...; ``--values``
computes only the value-accuracy part, cached); ``--seeds 0,1,2`` afterwards reports: per
variant the MC continuations, MC tokens and MC wall-clock per iteration, the training CPU
time, validation curves and test Pass@1 (500 × 4) of the policy selected on validation, mean
± SE over seeds; and on the same states of the SFT policy, the value MAE against 64-sample
truth and the MC cost of fixed K and of reuse, for K = 3 and 9.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from bench.runs import DOCS, RUNS, best_point, machine, mean_band, mean_se, run_one, write_doc

VARIANTS = {"fixed": {}, "reuse": {"vine.reuse_returns": True}}
NAMES = {"fixed": "VinePPO, fixed K", "reuse": "VinePPO, reuse_returns"}


def out_dir(variant: str, seed: int) -> Path:
    if variant == "fixed":
        return RUNS / "learning" / "2-4" / f"seed{seed}"  # bench.learning's own VinePPO run
    return RUNS / "reuse_returns" / f"seed{seed}"


def run(variant: str, seed: int, budget: Any, model: Path) -> dict[str, Any]:
    from services.trainer.evaluation.report import load_run

    res = run_one(
        "vine", seed, out_dir(variant, seed), budget, model, rl=VARIANTS[variant] or None, test=True
    )
    rows = [r for r in load_run(Path(res["dir"])).rows if int(r["iteration"]) > 0]

    def per_it(key: str) -> float:
        return statistics.mean(float(r.get(key, 0.0)) for r in rows)

    k = budget.k

    def share(part: list[dict[str, Any]]) -> float:  # MC samples / (K × states) of fixed K
        if variant == "fixed":
            return 1.0
        return statistics.mean(
            float(r["value/mc_samples"]) / (k * float(r["value/num_states"])) for r in part
        )

    res["cost"] = {
        "share_first": share(rows[:4]),
        "share_last": share(rows[-4:]),
        "samples": per_it("value/mc_samples")
        if variant == "reuse"
        else k * per_it("value/num_states"),
        "states": per_it("value/num_states"),
        "tokens": per_it("value/mc_tokens"),
        "values_s": per_it("time/values"),
        "cpu_s": sum(float(r.get("time/cpu_iteration", 0.0)) for r in rows),
    }
    return res


def value_accuracy(
    seed: int,
    k: int,
    model: Path | None = None,
    tag: str = "",
    prompts: int = 16,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Value MAE against 64-sample truth and MC cost of fixed K and of reuse, on the step
    states of the SFT policy's responses (``prompts`` test prompts × 4 responses at T = 0.6,
    the rollout setting); cached per ``tag`` (another ``model`` than the demo's), seed and K.
    ``dtype``: the replica's (None: the engine's default)."""
    from bench.credit_by_length import band_model
    from services.trainer.evaluation.runs import analyze_checkpoint
    from services.trainer.evaluation.value_probe import ProbeConfig, reuse_name
    from shared.datasets import load_examples

    out = RUNS / "reuse_returns" / "values" / f"{tag + '-' if tag else ''}k{k}-seed{seed}"
    cache = out / "summary.json"
    if cache.is_file():
        return dict(json.loads(cache.read_text()))
    band = {"min_steps": 2, "max_steps": 4}
    examples = load_examples("arithmetic", "test", n=prompts, seed=seed + 1, arithmetic=band)
    probe = ProbeConfig(
        responses=4,
        truth_k=64,
        vine_k=k,
        temperature=0.6,
        top_p=1.0,
        max_tokens=96,
        top_action_states=0,
        seed=seed,
        progress=False,
    )
    policy = model or band_model("2-4")
    doc = asyncio.run(analyze_checkpoint(policy, examples, probe, out, dtype=dtype))
    fixed, reuse = f"VinePPO K={k}", reuse_name(k)
    summary = {
        name: {"mae": doc["metrics"][name]["mae"], **doc["records"]["mc_cost"][name]}
        for name in (fixed, reuse)
    }
    summary["states"] = doc["metrics"][fixed]["num_states"]
    cache.write_text(json.dumps(summary))
    return summary


def value_lines(
    seeds: list[int],
    ks: tuple[int, ...] = (3, 9),
    model: Path | None = None,
    tag: str = "",
    prompts: int = 16,
    dtype: str | None = None,
) -> list[str]:
    lines = [
        "## Value accuracy and MC cost on the same states"
        + (f" ({tag}: `{model}`)" if model else "")
        + (f", sampled in {dtype}" if dtype else ""),
        "",
        f"Step states of the SFT policy's responses to {prompts} test prompts × 4 responses "
        "(T = 0.6), per seed; MAE of each response's baseline V̂(s_i) against 64-sample "
        "truth, over every (response, step) pair; MC continuations and tokens per batch "
        "(reuse: the first k_u of the same K samples, its tokens scaled by k_u / K). "
        "Mean ± SE over seeds.",
        "",
        "| K | estimate | value MAE | MC continuations | MC tokens | tokens vs fixed K |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for k in ks:
        runs = [value_accuracy(s, k, model, tag, prompts, dtype) for s in seeds]
        fixed, reuse = f"VinePPO K={k}", f"VinePPO K={k}, reusing returns"
        for name in (fixed, reuse):
            ratio = [r[name]["tokens"] / r[fixed]["tokens"] for r in runs]
            lines.append(
                f"| {k} | {'fixed K' if name == fixed else 'reuse_returns'} | "
                f"{_ms([r[name]['mae'] for r in runs])} | "
                f"{_ms([r[name]['samples'] for r in runs], 0)} | "
                f"{_ms([r[name]['tokens'] for r in runs], 0)} | {_ms(ratio, 2)} |"
            )
    return lines


def _ms(values: list[float], digits: int = 3) -> str:
    m, se = mean_se(values)
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def report(seeds: list[int], budget: Any, runs: dict[str, list[dict[str, Any]]]) -> None:
    from bench.learning_plot import plot

    lines = [
        "# VinePPO: fixed K against reusing the batch's returns (`vine.reuse_returns`)",
        "",
        f"Command: `.venv/bin/python -m bench.reuse_returns --seeds {','.join(map(str, seeds))}`",
        "",
        machine() + ".",
        f"Per run: the learning benchmark's VinePPO ({budget.iterations} iterations × "
        f"{budget.prompts} prompts × {budget.responses} responses, K = {budget.k}, band 2-4); "
        "the fixed-K runs are `bench.learning`'s. Validation Pass@1 on "
        f"{budget.val_problems} problems × {budget.val_seeds} samples every "
        f"{budget.eval_every} iterations; test Pass@1 of the policy selected on validation on "
        f"{budget.test_problems} × {budget.test_seeds}; mean ± SE over seeds. MC figures are "
        "per iteration; `values s` is the wall-clock of the MC step (other runs shared the "
        "machine), `CPU s` the trainer's CPU time of all iterations.",
        "",
        "| variant | test Pass@1 | per seed | best val, mean curve (it) | MC continuations | "
        "MC tokens | values s | CPU s |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for v, rs in runs.items():
        test = [r["test Pass@1"] for r in rs]
        per_seed = ", ".join(f"{r['test Pass@1']:.3f} ± {r['test SE']:.3f}" for r in rs)
        curve = mean_band([r["curves"]["val"] for r in rs])
        it, best = best_point({i: c[0] for i, c in curve.items()})
        cost = {key: [r["cost"][key] for r in rs] for key in rs[0]["cost"]}
        lines.append(
            f"| {NAMES[v]} | {_ms(test)} | {per_seed} | {best:.3f} ({it}) | "
            f"{_ms(cost['samples'], 0)} | {_ms(cost['tokens'], 0)} | "
            f"{_ms(cost['values_s'], 1)} | {_ms(cost['cpu_s'], 0)} |"
        )
    fixed, reuse = runs["fixed"], runs["reuse"]
    ratio = [r["cost"]["tokens"] / f["cost"]["tokens"] for f, r in zip(fixed, reuse, strict=True)]
    gap = [r["test Pass@1"] - f["test Pass@1"] for f, r in zip(fixed, reuse, strict=True)]
    lines += [
        "",
        f"Reuse spends {_ms(ratio)} of fixed K's MC tokens per iteration (per seed: "
        f"{', '.join(f'{x:.2f}' for x in ratio)}); test Pass@1 reuse − fixed: {_ms(gap)}.",
        "",
        "Why the saving grows as the policy learns: a state that n ≥ K + 1 responses of the "
        "batch pass through needs no continuation at all (its baselines rest on the other "
        "responses' returns), and the more the policy agrees with itself the more its "
        "responses to a prompt share prefixes. Reuse's MC continuations as a share of fixed "
        "K's on the same states: "
        f"{_ms([r['cost']['share_first'] for r in reuse], 2)} over iterations 1–4, "
        f"{_ms([r['cost']['share_last'] for r in reuse], 2)} over the last four. On the SFT "
        "policy's states (below) it is 0.3–0.8×, by K.",
        "",
        "Caveats: the reuse runs use fixed K's learning rate and KL (VinePPO's sweep, "
        "`DEMO_RL`), not a sweep of their own; both variants get the same 32 iterations, and "
        "reuse's mean validation curve peaks at its last validation, so it may not have "
        "plateaued — the comparison is at equal budget. MC wall-clock shared the 2 cores with "
        "the other runs; the CPU seconds and token counts do not depend on that.",
        "",
        "![validation Pass@1 and train reward, fixed K and reuse](reuse_returns.png)",
    ]
    val = {v: mean_band([r["curves"]["val"] for r in rs]) for v, rs in runs.items()}
    reward = {v: mean_band([r["curves"]["reward"] for r in rs]) for v, rs in runs.items()}
    plot(val, reward, DOCS / "reuse_returns.png", NAMES)
    write_doc(DOCS / "reuse_returns.md", [*lines, "", *value_lines(seeds)])
    keep = ("seed", "test Pass@1", "test SE", "cost", "curves")
    data = {v: [{k: r[k] for k in keep} for r in rs] for v, rs in runs.items()}
    (DOCS / "reuse_returns.json").write_text(json.dumps(data, indent=1) + "\n")


def main() -> None:
    from bench.credit_by_length import band_model
    from services.demo.run import BUDGETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="fixed,reuse")
    ap.add_argument("--iterations", type=int, default=32)
    ap.add_argument("--values", action="store_true", help="only the value-accuracy part")
    ap.add_argument("--model", type=Path, help="--values on another SFT model's states")
    ap.add_argument("--tag", default="", help="its name (cache directories, the table)")
    ap.add_argument("--ks", default="3,9", help="--values: the Ks compared")
    ap.add_argument("--prompts", type=int, default=16, help="--values: test prompts probed")
    ap.add_argument("--dtype", help="--values: the replica's dtype (e.g. bfloat16)")
    args = ap.parse_args()
    if args.values:
        seeds, ks = [int(s) for s in args.seeds.split(",")], tuple(map(int, args.ks.split(",")))
        lines = value_lines(seeds, ks, args.model, args.tag, args.prompts, args.dtype)
        print("\n".join(lines))
        if args.model is not None:  # another model's states: a doc of their own
            write_doc(DOCS / f"reuse_returns_{args.tag or 'model'}.md", lines)
        return
    budget = dataclasses.replace(BUDGETS["full"], iterations=args.iterations)
    model = band_model("2-4")
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    runs = {v: [run(v, s, budget, model) for s in seeds] for v in variants}
    if len(seeds) > 1 and set(variants) == set(VARIANTS):
        report(seeds, budget, runs)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
