"""Does VinePPO's edge over trajectory-level baselines grow with the length of the reasoning?

    .venv/bin/python -m bench.credit_by_length --seeds 0,1,2 --bands 2-4,4-6,6-8

The built-in task in three bands of reasoning length (`LENGTH_BANDS`: 2–4, 4–6 and 6–8 steps),
each with its own careless SFT model made by the same recipe (`band_model`; the slip rate per
band keeps a slip-free solution equally likely, so only the length changes). In every band
PPO, GRPO, RLOO and VinePPO train with the same budget and each method's hyperparameters from
its sweep on band 2–4 (`DEMO_RL`). The runs are ``bench.learning``'s (``runs/learning/<band>``,
reused when finished), so band 2-4 is docs/benchmarks/learning.md's. Writes
docs/benchmarks/credit_by_length.md and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from bench.runs import (
    BASELINES,
    DOCS,
    NAMES,
    RUNS,
    best_point,
    first_reach,
    machine,
    mean_band,
    mean_se,
    run_one,
    write_doc,
)

ALGOS = ("ppo", "grpo", "rloo", "vine")
SUMMARY = DOCS / "credit_by_length.json"  # each band's numbers, kept between invocations
READING = """\
## Reading (written for the three bands measured 2026-12-05/07; check it against the tables
when they change)

VinePPO's edge over the best baseline does not grow with reasoning length on this task: the
gap to PPO is within one standard error of 0 in every band, and the slope is 0. Against the
trajectory-level critic-free baselines VinePPO is ahead in every band (GRPO by 0.03, 0.01,
0.03; RLOO by 0.02, 0.01, 0.02), but that edge does not grow either. What we think limits it:

- **Everything ends near the ceiling.** By iteration 32 PPO and VinePPO reach 0.97–0.98 test
  Pass@1 in every band, so a length effect has little room to show at the end; the speed
  table is where it could, and there VinePPO reaches PPO's peak in 0.86–0.88× the
  iterations in every band, but at 0.81×, 1.01× and 1.15× the CPU time: its MC cost grows
  with the number of steps, PPO's does not.
- **The task's credit assignment is easy for a trajectory-level signal.** The only error is
  a slip (a carried result copied one too high). Every other token of a wrong response also
  appears in right ones, so with 64 episodes per iteration a return-minus-baseline gradient
  cancels on them and falls on the slip tokens, at any length. PPO's advantage here (GAE
  λ = 1, the paper's) is of that kind: its critic ends with MAE 0.13–0.17 (below the group
  mean's 0.16–0.22) but explained variance −0.05 to −0.15 on band 6-8, and PPO still matches
  VinePPO. The paper's gap on MATH comes from heterogeneous problems, where no such
  cancellation across samples is available; this task does not reproduce that.
- **Hyperparameters come from band 2-4.** GRPO's validation curves oscillate on band 6-8
  (0.79–0.93 after iteration 4), a sign that its learning rate (3e-4) is high for longer
  responses; a per-band sweep could move the baselines, not VinePPO's gap to PPO.
- **GRPO and RLOO had not levelled off on band 6-8.** Their best-by-validation policy was at
  the last validation (iteration 32) in 5 of 6 runs, so their numbers may still rise with
  more iterations. PPO's best was at 20–28 and VinePPO's at 24.
"""


def band_model(band: str) -> Path:
    """The SFT model (π_ref) of a band: the demo's committed one for 2-4; for the others the
    ``length-<band>`` SFT preset, trained into ``runs/sft-<band>`` on first use (about 15–25
    minutes of one core) and reused while its settings match."""
    from services.demo.run import DEMO_BAND, committed_sft
    from services.trainer.sft.config import SFT_PRESETS, SFTConfig
    from services.trainer.sft.train import run_sft

    if band == DEMO_BAND:
        return committed_sft()
    settings = SFT_PRESETS[f"length-{band}"]
    out = RUNS / f"sft-{band}"
    stamp = out / "sft.json"
    if (
        (out / "best" / "config.json").is_file()
        and stamp.is_file()
        and json.loads(stamp.read_text()) == settings
    ):
        return out / "best"
    run_sft(SFTConfig.model_validate({**settings, "output_dir": str(out)}))
    stamp.write_text(json.dumps(settings, indent=1) + "\n")
    return out / "best"


def run_band(band: str, seeds: list[int], budget: Any) -> dict[str, list[dict[str, Any]]]:
    """Every method × seed of one band (each run reused when finished)."""
    model = band_model(band)
    out = RUNS / "learning" / band  # the same runs as bench.learning --band <band>
    return {
        a: [run_one(a, s, out / f"seed{s}", budget, model, band=band, test=True) for s in seeds]
        for a in ALGOS
    }


def cell(runs: list[dict[str, Any]], key: str = "test") -> tuple[float, float]:
    """Mean ± SE over seeds of ``<key> Pass@1``; a band run with one seed gets that run's
    standard error over test problems instead (a smaller, within-seed error: the table says
    how many seeds each band has)."""
    if len(runs) == 1:
        return runs[0][f"{key} Pass@1"], runs[0][f"{key} SE"]
    return mean_se([r[f"{key} Pass@1"] for r in runs])


def gap(runs: dict[str, list[dict[str, Any]]]) -> tuple[str, float, float]:
    """(best baseline, mean gap VinePPO − it in test Pass@1, SE of the gap over seeds): the
    best baseline by mean test Pass@1; the gap paired by seed (same test problems). With one
    seed the SE is that of a difference of two independent test estimates."""
    means = {b: statistics.mean(r["test Pass@1"] for r in runs[b]) for b in BASELINES}
    best = max(means, key=lambda b: means[b])
    pairs = list(zip(runs["vine"], runs[best], strict=True))
    if len(pairs) == 1:
        v, b = pairs[0]
        return best, v["test Pass@1"] - b["test Pass@1"], math.hypot(v["test SE"], b["test SE"])
    mean, se = mean_se([v["test Pass@1"] - b["test Pass@1"] for v, b in pairs])
    return best, mean, se


def speed(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The best baseline's peak on its mean validation curve (by mean over seeds) and when
    VinePPO's mean curve first reaches it: iterations and training CPU seconds of each."""
    val = {
        a: {i: v[0] for i, v in mean_band([r["curves"]["val"] for r in rs]).items()}
        for a, rs in runs.items()
    }
    clock = {
        a: {i: v[0] for i, v in mean_band([r["curves"]["cpu"] for r in rs]).items()}
        for a, rs in runs.items()
    }
    peaks = {b: best_point(val[b]) for b in BASELINES}
    best = max(peaks, key=lambda b: peaks[b][1])
    it, peak = peaks[best]
    hit = first_reach(val["vine"], peak)
    return {
        "baseline": best,
        "peak": peak,
        "iteration": it,
        "cpu_s": clock[best][it],
        "vine_iteration": hit,
        "vine_cpu_s": None if hit is None else clock["vine"][hit],
    }


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The numbers one band contributes to the report (kept in credit_by_length.json, so a
    band run once is reported again without its run directories)."""
    best, g, se = gap(runs)
    return {
        "seeds": len(runs["vine"]),
        "sft": cell(runs["vine"], "sft"),
        **{a: cell(runs[a]) for a in ALGOS},
        "gap": {"baseline": best, "mean": g, "se": se},
        "speed": speed(runs),
    }


def length_slope(bands: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """Least-squares slope of the gap against the band's mean number of steps, per step,
    with its standard error from the bands' own gap SEs (the bands are independent runs):
    slope = Σ wᵢ gᵢ with wᵢ = (xᵢ − x̄) / Σ (x − x̄)², SE = √(Σ wᵢ² seᵢ²)."""
    xs = [statistics.mean(map(int, b.split("-"))) for b in bands]
    mx = statistics.mean(xs)
    sxx = sum((x - mx) ** 2 for x in xs)
    w = [(x - mx) / sxx for x in xs]
    gaps = [s["gap"] for s in bands.values()]
    slope = sum(wi * g["mean"] for wi, g in zip(w, gaps, strict=True))
    return slope, math.sqrt(sum((wi * g["se"]) ** 2 for wi, g in zip(w, gaps, strict=True)))


def plot(bands: dict[str, dict[str, Any]], path: Path) -> None:
    """Left: test Pass@1 per method and band (mean ± SE over seeds); right: the gap VinePPO −
    best baseline per band (± SE, paired by seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bands)
    xs = list(range(len(names)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for i, a in enumerate(("sft", *ALGOS)):
        stats = [bands[b][a] for b in names]
        axes[0].errorbar(
            [x + 0.06 * (i - 2) for x in xs],
            [m for m, _ in stats],
            yerr=[e for _, e in stats],
            marker="o",
            capsize=3,
            label=NAMES[a],
        )
    gaps = [bands[b]["gap"] for b in names]
    axes[1].errorbar(
        xs,
        [g["mean"] for g in gaps],
        yerr=[g["se"] for g in gaps],
        marker="o",
        capsize=4,
        color="black",
    )
    axes[1].axhline(0, color="grey", lw=0.8, ls="--")
    for x, g in zip(xs, gaps, strict=True):
        axes[1].annotate(
            f"vs {NAMES[g['baseline']]}",
            (x, g["mean"]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize="small",
        )
    for ax, label in (
        (axes[0], "test Pass@1 (± SE over seeds)"),
        (axes[1], "VinePPO − best baseline (± SE)"),
    ):
        ax.set_xticks(xs, [f"{b} steps" for b in names])
        ax.set_xlabel("reasoning length (band)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def speed_row(sp: dict[str, Any]) -> str:
    head = f"{NAMES[sp['baseline']]} {sp['peak']:.3f} @ {sp['iteration']}"
    if sp["vine_iteration"] is None:
        return f"{head} | never | |"
    return (
        f"{head} ({sp['cpu_s']:.0f} CPU s) | {sp['vine_iteration']} "
        f"({sp['vine_cpu_s']:.0f} CPU s) | {sp['vine_iteration'] / sp['iteration']:.2f}× / "
        f"{sp['vine_cpu_s'] / max(sp['cpu_s'], 1e-9):.2f}× |"
    )


def report(args: argparse.Namespace, budget: Any, bands: dict[str, dict[str, Any]]) -> None:
    """Writes docs/benchmarks/credit_by_length.md/.png from the bands' summaries."""
    from services.demo.run import DEMO_RL
    from services.trainer.sft.config import LENGTH_BANDS

    png = DOCS / "credit_by_length.png"
    plot(bands, png)
    lines = [
        "# Credit assignment across reasoning length (built-in task)",
        "",
        f"Command: `.venv/bin/python -m bench.credit_by_length --seeds {args.seeds} "
        f"--bands {args.bands} --iterations {budget.iterations} --eval-every "
        f"{budget.eval_every}` (a band absent from `--bands` is reported from "
        "`credit_by_length.json`, where each band's numbers are kept when it is run)",
        "",
        f"{machine()}. Per band: its own SFT model by the same recipe (the `demo` SFT "
        "preset for 2-4, `length-4-6` and `length-6-8`: 4,800 steps on 20,000 problems, "
        "slip rates "
        + " / ".join(f"{b['slip_rate']:.2f}" for b in LENGTH_BANDS.values())
        + " so that a slip-free solution is equally likely in every band at T = 0.6). "
        f"Per run: {budget.iterations} iterations × {budget.prompts} prompts × "
        f"{budget.responses} responses, VinePPO K = {budget.k}, each method's "
        "hyperparameters from its sweep on band 2-4 (`DEMO_RL`: "
        f"`{json.dumps(DEMO_RL)}`), the same in every band. Test Pass@1 of the policy "
        f"selected on validation, {budget.test_problems} problems × {budget.test_seeds} "
        "samples at T = 0.35; mean ± standard error over seeds (each seed has its own test "
        "problems; the gap is paired by seed); a band with one seed shows that run's "
        "± standard error over test problems.",
        "",
        "| band | seeds | SFT | "
        + " | ".join(NAMES[a] for a in ALGOS)
        + " | VinePPO − best baseline |",
        "|---|" + "---:|" * (len(ALGOS) + 3),
    ]
    for band, sm in bands.items():
        g = sm["gap"]
        lines.append(
            f"| {band} | {sm['seeds']} | "
            + " | ".join(f"{m:.3f} ± {e:.3f}" for m, e in (sm[a] for a in ("sft", *ALGOS)))
            + f" | {g['mean']:+.3f} ± {g['se']:.3f} (vs {NAMES[g['baseline']]}) |"
        )
    if len(bands) > 1:
        slope, se = length_slope(bands)
        lines += [
            "",
            f"Trend: the gap changes by {slope:+.4f} ± {se:.4f} per reasoning step "
            "(least-squares slope against the band's mean length, SE from the bands' gap "
            f"SEs): {'a growth' if slope > 2 * se else 'no growth'} of VinePPO's edge with "
            "length at 2 standard errors.",
        ]
    lines += [
        "",
        "Speed: the best baseline's peak on its mean validation curve, and when "
        "VinePPO's mean curve first reaches it (iterations; training CPU seconds of the "
        "trainer process, validation excluded, PPO's critic warm-up included):",
        "",
        "| band | best baseline's peak (iteration) | VinePPO reaches it at | ratio "
        "(iterations / seconds) |",
        "|---|---:|---:|---:|",
        *(f"| {band} | {speed_row(sm['speed'])}" for band, sm in bands.items()),
        "",
        f"![test Pass@1 per band, VinePPO − best baseline]({png.name})",
        "",
        READING,
    ]
    write_doc(DOCS / "credit_by_length.md", lines)


def main() -> None:
    from services.demo.run import BUDGETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--bands",
        default="2-4,4-6,6-8",
        help="Bands; BAND:S+S runs that band with those seeds only (e.g. 6-8:0).",
    )
    ap.add_argument("--iterations", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="Run nothing: report the bands kept in credit_by_length.json.",
    )
    args = ap.parse_args()
    budget = dataclasses.replace(
        BUDGETS["full"], iterations=args.iterations, eval_every=args.eval_every
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    kept = json.loads(SUMMARY.read_text()) if SUMMARY.is_file() else {}
    for spec in args.bands.split(","):  # "6-8:0" = band 6-8 with seed 0 only
        band, _, only = spec.partition(":")
        if args.report_only:
            if band not in kept:
                raise SystemExit(f"--report-only: band {band} is not in {SUMMARY.name}; run it")
            continue
        runs = run_band(band, [int(x) for x in only.split("+")] if only else seeds, budget)
        kept[band] = summarise(runs)
        SUMMARY.write_text(json.dumps(kept, indent=1) + "\n")
    bands = {b: kept[b] for b in sorted(kept, key=lambda b: int(b.split("-")[0]))}
    report(args, budget, bands)


if __name__ == "__main__":
    main()
