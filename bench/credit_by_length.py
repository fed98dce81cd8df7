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


def speed(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Iterations and training seconds VinePPO's mean curve needs to reach the best
    baseline's peak (best by the mean validation curve)."""
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
    if hit is None:
        return f"{NAMES[best]} {peak:.3f} @ {it} | never | |"
    return (
        f"{NAMES[best]} {peak:.3f} @ {it} ({clock[best][it]:.0f} CPU s) | {hit} "
        f"({clock['vine'][hit]:.0f} CPU s) | {hit / it:.2f}× / "
        f"{clock['vine'][hit] / max(clock[best][it], 1e-9):.2f}× |"
    )


def plot(bands: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> None:
    """Left: test Pass@1 per method and band (mean ± SE over seeds); right: the gap VinePPO −
    best baseline per band (± SE, paired by seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bands)
    xs = list(range(len(names)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for i, a in enumerate(("sft", *ALGOS)):
        src = "vine" if a == "sft" else a
        stats = [cell(bands[b][src], "sft" if a == "sft" else "test") for b in names]
        axes[0].errorbar(
            [x + 0.06 * (i - 2) for x in xs],
            [m for m, _ in stats],
            yerr=[e for _, e in stats],
            marker="o",
            capsize=3,
            label=NAMES[a],
        )
    gaps = [gap(bands[b]) for b in names]
    axes[1].errorbar(
        xs, [g[1] for g in gaps], yerr=[g[2] for g in gaps], marker="o", capsize=4, color="black"
    )
    axes[1].axhline(0, color="grey", lw=0.8, ls="--")
    for x, g in zip(xs, gaps, strict=True):
        axes[1].annotate(
            f"vs {NAMES[g[0]]}",
            (x, g[1]),
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


def report(args: argparse.Namespace, budget: Any, bands: dict[str, Any]) -> None:
    from services.demo.run import DEMO_RL
    from services.trainer.sft.config import LENGTH_BANDS

    png = DOCS / "credit_by_length.png"
    plot(bands, png)
    lines = [
        "# Credit assignment across reasoning length (built-in task)",
        "",
        f"Command: `.venv/bin/python -m bench.credit_by_length --seeds {args.seeds} "
        f"--bands {args.bands} --iterations {budget.iterations} --eval-every "
        f"{budget.eval_every}`",
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
    for band, runs in bands.items():
        sft = cell(runs["vine"], "sft")
        cells = [cell(runs[a]) for a in ALGOS]
        best, g, se = gap(runs)
        lines.append(
            f"| {band} | {len(runs['vine'])} | {sft[0]:.3f} ± {sft[1]:.3f} | "
            + " | ".join(f"{m:.3f} ± {e:.3f}" for m, e in cells)
            + f" | {g:+.3f} ± {se:.3f} (vs {NAMES[best]}) |"
        )
    lines += [
        "",
        "Speed: the best baseline's peak on its mean validation curve, and when "
        "VinePPO's mean curve first reaches it (iterations; training CPU seconds of the "
        "trainer process, validation excluded, PPO's critic warm-up included):",
        "",
        "| band | best baseline's peak (iteration) | VinePPO reaches it at | ratio "
        "(iterations / seconds) |",
        "|---|---:|---:|---:|",
        *(f"| {band} | {speed(runs)}" for band, runs in bands.items()),
        "",
        f"![test Pass@1 per band, VinePPO − best baseline]({png.name})",
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
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    budget = dataclasses.replace(
        BUDGETS["full"], iterations=args.iterations, eval_every=args.eval_every
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    bands = {}
    for spec in args.bands.split(","):  # "6-8:0" = band 6-8 with seed 0 only
        band, _, only = spec.partition(":")
        bands[band] = run_band(band, [int(x) for x in only.split("+")] if only else seeds, budget)
    if len(seeds) > 1:
        report(args, budget, bands)


if __name__ == "__main__":
    main()
