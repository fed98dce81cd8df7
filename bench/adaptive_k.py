"""Can a state stop sampling early? Exact error and cost of adaptive-K rules for an MC value.

    .venv/bin/python -m bench.adaptive_k          # docs/benchmarks/adaptive_k.md

A state's return is Bernoulli(p) (the reward is 0 or 1), so every rule can be scored exactly
by enumerating outcomes, no sampling: its bias E[V̂] − p, mean absolute error E|V̂ − p| and
expected continuations, against fixed K. The rules, with k_min ≤ K:

- ``fixed K``: the mean of K returns (unbiased, MAE falls as 1/√K);
- ``stop if agree``: k_min returns; if they all agree, stop there, else draw up to K and take
  the mean of all (cheap on states at exactly 0 or 1, biased in between: agreement of a few
  draws is likely at p = 0.2 and then says 0);
- ``roulette``: the same, but an agreeing state continues with probability q and then
  weighs the correction by 1/q: V̂ = m_k + (B/q)(m_all − m_k), unbiased for any q > 0 (the
  continuation decision only scales a term of mean zero), at a variance cost.

Then the same rules on real states: the 64-sample truths of the states that
``bench.reuse_returns --values`` probed (an SFT policy's responses, K = 9 runs: the demo's,
and SmolLM2's with ``--model runs/real_lm/sft/best --tag smollm2``) weigh each p. Each
source's summary is kept in ``adaptive_k.json``, so a source whose runs are gone is still
reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterator
from math import comb
from pathlib import Path
from typing import Any

from bench.runs import DOCS, RUNS, write_doc

Outcome = tuple[float, float, float]  # (probability, estimate, continuations drawn)


def _binom(n: int, p: float) -> Iterator[tuple[int, float]]:
    for s in range(n + 1):
        yield s, comb(n, s) * p**s * (1 - p) ** (n - s)


def fixed(p: float, k: int) -> list[Outcome]:
    return [(w, s / k, k) for s, w in _binom(k, p)]


def adaptive(p: float, k_min: int, k: int, q: float = 0.0) -> list[Outcome]:
    """``stop if agree`` (q = 0) or ``roulette`` (q > 0): every outcome of the rule."""
    out: list[Outcome] = []
    for s1, w1 in _binom(k_min, p):
        m1 = s1 / k_min
        go = 1.0 if 0 < s1 < k_min else q  # mixed draws always continue
        if go < 1.0:
            out.append((w1 * (1 - go), m1, k_min))
        for s2, w2 in _binom(k - k_min, p):
            m_all = (s1 + s2) / k
            est = m_all if go == 1.0 or q == 0.0 else m1 + (m_all - m1) / go
            if go > 0:
                out.append((w1 * go * w2, est, k))
    return out


def score(outcomes: list[Outcome], p: float) -> dict[str, float]:
    """Bias, MAE, RMSE and expected continuations of a rule's outcomes at true value p."""
    mean = sum(w * e for w, e, _ in outcomes)
    return {
        "bias": mean - p,
        "mae": sum(w * abs(e - p) for w, e, _ in outcomes),
        "rmse": sum(w * (e - p) ** 2 for w, e, _ in outcomes) ** 0.5,
        "cost": sum(w * c for w, _, c in outcomes),
    }


RULES = {
    "fixed K = 3": lambda p: fixed(p, 3),
    "fixed K = 9": lambda p: fixed(p, 9),
    "stop if 3 agree, else 9": lambda p: adaptive(p, 3, 9),
    "stop if 2 agree, else 9": lambda p: adaptive(p, 2, 9),
    "roulette 3 → 9, q = 0.25": lambda p: adaptive(p, 3, 9, 0.25),
}


# states probed by ``bench.reuse_returns --values`` (K = 9 runs), by the policy they came from
SOURCES = {"the demo's": "k9-seed*", "SmolLM2's": "smollm2-k9-seed*"}
SUMMARY = DOCS / "adaptive_k.json"  # per source: what the report needs (runs/ is not kept)


def probed_truths(pattern: str) -> list[float]:
    """64-sample truths of the probed states (one per (response, step)), all seeds."""
    found = sorted((RUNS / "reuse_returns" / "values").glob(f"{pattern}/analysis.json"))
    return [t for f in found for t in json.loads(f.read_text())["records"]["truth"]]


def weighted(truths: list[float]) -> dict[str, Any]:
    """Each rule's MAE, bias and continuations averaged over states (truth standing in for p)."""
    base = statistics.mean(score(RULES["fixed K = 9"](p), p)["cost"] for p in truths)
    rules = {}
    for name, rule in RULES.items():
        scores = [score(rule(p), p) for p in truths]
        cost = statistics.mean(s["cost"] for s in scores)
        rules[name] = {
            "mae": statistics.mean(s["mae"] for s in scores),
            "bias": statistics.mean(s["bias"] for s in scores),
            "cost": cost,
            "vs K=9": cost / base,
        }
    exact = sum(t in (0.0, 1.0) for t in truths) / len(truths)
    return {"states": len(truths), "exact": exact, "rules": rules}


def source_lines(source: str, summary: dict[str, Any]) -> list[str]:
    return [
        "",
        f"## Weighted by {source} states",
        "",
        f"{summary['states']} (response, step) states of {source} SFT policy (`bench."
        f"reuse_returns --values`, K = 9 runs); {summary['exact']:.0%} have a 64-sample truth "
        "of exactly 0 or 1. Each rule's MAE and continuations averaged over them (the truth "
        "standing in for p):",
        "",
        "| rule | MAE | bias (mean) | continuations per state | vs fixed K = 9 |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {r['mae']:.3f} | {r['bias']:+.4f} | {r['cost']:.2f} | {r['vs K=9']:.2f}× |"
            for name, r in summary["rules"].items()
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DOCS / "adaptive_k.md")
    args = ap.parse_args()
    grid = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
    lines = [
        "# Adaptive K for an MC value: exact error and cost",
        "",
        "Command: `.venv/bin/python -m bench.adaptive_k` (exact enumeration, no sampling; "
        "the rules in the script's docstring). By symmetry p and 1 − p score alike.",
        "",
        "| rule | " + " | ".join(f"p = {p}" for p in grid) + " |",
        "|---|" + "---:|" * len(grid),
    ]
    for name, rule in RULES.items():
        cells = []
        for p in grid:
            sc = score(rule(p), p)
            cells.append(f"{sc['mae']:.3f} / {sc['bias']:+.3f} / {sc['cost']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: MAE / bias / expected continuations."]
    kept = json.loads(SUMMARY.read_text()) if SUMMARY.is_file() else {}
    for source, pattern in SOURCES.items():
        if truths := probed_truths(pattern):
            kept[source] = weighted(truths)
        if source in kept:
            lines += source_lines(source, kept[source])
    SUMMARY.write_text(json.dumps(kept, indent=1) + "\n")
    write_doc(args.out, lines)


if __name__ == "__main__":
    main()
