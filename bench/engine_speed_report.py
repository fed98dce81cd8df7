"""The report of bench/engine_speed.py: its tables (best run per cell, by tokens per CPU
second) and the doc, whose hand-written notes survive a rewrite."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path


def best(results: list[dict], root: str, what: str, batch: int) -> dict:
    rows = [
        r
        for res in results
        if res["root"] == root
        for r in res["rows"]
        if r["what"] == what and r["batch"] == batch
    ]
    return max(rows, key=lambda r: r["tokens"] / r["cpu"])


def cell(r: dict) -> str:
    """Tokens per CPU second (the comparison), then per wall second and the load."""
    cpu_rate, wall_rate = r["tokens"] / r["cpu"], r["tokens"] / r["s"]
    return f"**{cpu_rate:.0f}** ({wall_rate:.0f} wall, load {r['load']:.1f})"


def report(
    args: argparse.Namespace,
    results: list[dict],
    roots: list[str],
    params: int,
    batches: tuple[int, ...],
    early_batches: tuple[int, ...],
) -> str:
    import torch

    head = "| batch | bare transformers | " + " | ".join(f"engine `{r}`" for r in roots)
    head += " | " + " | ".join(f"engine/bare `{r}`" for r in roots) + " |"
    lines = [head, "|---:|---:|" + "---:|" * (2 * len(roots))]
    bare_root = roots[-1]
    for b in batches:
        bare = best(results, bare_root, "bare", b)
        engs = [best(results, r, "engine", b) for r in roots]
        ratios = [(e["tokens"] / e["cpu"]) / (bare["tokens"] / bare["cpu"]) for e in engs]
        lines.append(
            f"| {b} | {cell(bare)} | "
            + " | ".join(cell(e) for e in engs)
            + " | "
            + " | ".join(f"{x:.0%}" for x in ratios)
            + " |"
        )
    lines += [
        "",
        "Rows that end early (10 token ids act as EOS), engine tokens/s:",
        "",
        "| batch | " + " | ".join(f"`{r}`" for r in roots) + " |",
        "|---:|" + "---:|" * len(roots),
    ]
    for b in early_batches:
        lines.append(
            f"| {b} | " + " | ".join(cell(best(results, r, "early", b)) for r in roots) + " |"
        )
    vbatch = next(x["batch"] for res in results for x in res["rows"] if x["what"] == "values")
    vals = [best(results, r, "values", vbatch) for r in roots]
    lines += [
        "",
        f"MC values (c), {vbatch} rows (step-boundary states x K = 3), engine tokens/s:",
        "",
        "| " + " | ".join(f"`{r}`" for r in roots) + " |",
        "|" + "---:|" * len(roots),
        "| " + " | ".join(cell(v) for v in vals) + " |",
    ]
    text = "\n".join(lines)
    return (
        f"Command: `.venv/bin/python -m bench.engine_speed {' '.join(sys.argv[1:])}`".rstrip()
        + f"\n\nMachine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared), torch {torch.__version__}, {args.threads} torch "
        f"thread(s); model: demo '{args.preset}' preset, {params / 1e6:.2f}M parameters, random "
        f"init; {args.max_tokens} tokens per row, T = {args.temperature}, EOS off; best of "
        f"{args.repeats} runs per cell. Each cell: **tokens per CPU second** of the process "
        "(one torch thread, so CPU time is the work done, far less sensitive to the other jobs "
        "on this shared machine than wall time; the ratios use it), then tokens per wall "
        "second and the 1-minute load average when the run finished.\n\n" + text + "\n"
    )


NOTES = "<!-- notes: kept when the benchmark rewrites this file -->"


def write_doc(path: Path, results: str) -> None:
    """Title + results; the hand-written part from the NOTES marker on is kept."""
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES) :] if NOTES in old else NOTES + "\n"
    title = "# Torch engine decode speed vs a bare transformers loop (demo model, CPU)\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(title + results + "\n" + notes)
