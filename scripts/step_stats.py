"""Step-count distribution of the gold solutions under `shared.steps.split_steps`.

Segments all 1,319 GSM8K test solutions, all 500 MATH-500 solutions and 1,000 generated
arithmetic test problems, prints mean / median / max steps and characters per step and a
histogram per dataset, and writes the same to ``docs/benchmarks/step_stats.md``.

    .venv/bin/python scripts/step_stats.py [--data-dir data] [--out docs/benchmarks/step_stats.md]
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path

from shared.datasets import load_examples
from shared.steps import split_steps

BUCKETS = [(k, k) for k in range(1, 11)] + [(11, 15), (16, 25)]
BUCKETS.append((26, 10**9))


def bucket_name(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}")


def stats_table(name: str, solutions: list[str], rules: str) -> list[str]:
    counts, lengths = [], []
    for text in solutions:
        spans = split_steps(text, rules)
        counts.append(len(spans))
        lengths += [b - a for a, b in spans]
    hist = Counter(next(b for b in BUCKETS if b[0] <= c <= b[1]) for c in counts)
    width = max(hist.values())
    lines = [
        f"### {name} ({len(solutions)} gold solutions, `{rules}` rules)",
        "",
        f"steps per solution: mean {statistics.mean(counts):.2f}, "
        f"median {statistics.median(counts):g}, max {max(counts)}, min {min(counts)}; "
        f"characters per step: mean {statistics.mean(lengths):.1f}, max {max(lengths)}",
        "",
        "| steps | solutions | |",
        "|---:|---:|:---|",
    ]
    for b in BUCKETS:
        if hist.get(b):
            bar = "█" * max(1, round(30 * hist[b] / width))
            lines.append(f"| {bucket_name(*b)} | {hist[b]} | {bar} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with gsm8k/, math/")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/step_stats.md"))
    args = parser.parse_args()
    gsm8k = load_examples("gsm8k", "test", data_dir=args.data_dir)
    math = load_examples("math", "test", data_dir=args.data_dir)
    arith = load_examples("arithmetic", "test", n=1000, seed=0)
    body = [
        "# Reasoning steps per gold solution",
        "",
        "Produced by `.venv/bin/python scripts/step_stats.py` (segmentation rules: "
        "`shared/steps.py`, described in `docs/shared.md`).",
        "",
        *stats_table("GSM8K test", [e.solution for e in gsm8k], "gsm8k"),
        *stats_table("MATH-500", [e.solution for e in math], "math"),
        *stats_table(
            "arithmetic test (default config, seed 0)", [e.solution for e in arith], "arithmetic"
        ),
    ]
    text = "\n".join(body)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
