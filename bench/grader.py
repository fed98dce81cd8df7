"""Grader throughput and latency: the sandboxed pool (2 workers) vs math-verify alone.

    .venv/bin/python bench/grader.py [--workers 2] [--repeat 2] [--out docs/benchmarks/grader.md]

Items are distinct (the pool grades identical items once, so repeats would flatter it):
for every problem, its own gold solution against its own answer (correct) and against another
problem's answer (incorrect). Throughput is one big batch; latency is per request of 64 items
sent one after another (what a rollout replica sends). The baseline calls math-verify's
``parse`` + ``verify`` in this process on one core, with no sandbox.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds a queue.py that would shadow the stdlib module: import from the repo root.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from services.reward.sandbox import GraderPool  # noqa: E402
from shared.schemas import GradeItem  # noqa: E402


def load_items(dataset: str, repeat: int) -> list[GradeItem]:
    """Distinct (response, gold) pairs: own answer and a shifted problem's answer."""
    if dataset == "gsm8k":
        rows = [json.loads(x) for x in (ROOT / "data/gsm8k/test.jsonl").read_text().splitlines()]
        sols = [r["answer"] for r in rows]
        golds = [s.split("####")[-1].strip() for s in sols]
    else:
        rows = [json.loads(x) for x in (ROOT / "data/math/test.jsonl").read_text().splitlines()]
        sols, golds = [r["solution"] for r in rows], [r["answer"] for r in rows]
    items = []
    for shift in range(repeat):
        for i, sol in enumerate(sols):
            gold = golds[(i + shift) % len(golds)]
            items.append(GradeItem(response=sol, gold=gold, dataset=dataset))  # type: ignore[arg-type]
    return items


async def bench_pool(items: list[GradeItem], workers: int) -> dict[str, float]:
    async with GraderPool(workers=workers, timeout_s=2.0, memory_mb=1024) as pool:
        await pool.grade_batch(items[:8])  # warm the pipes
        t0 = time.perf_counter()
        verdicts = await pool.grade_batch(items)
        elapsed = time.perf_counter() - t0
        latencies = []
        for i in range(0, min(len(items), 64 * 40), 64):
            t1 = time.perf_counter()
            await pool.grade_batch(items[i : i + 64])
            latencies.append(time.perf_counter() - t1)
        restarts = pool.restarts
    correct = sum(v.status == "correct" for v in verdicts)
    return {
        "n": len(items),
        "per_s": len(items) / elapsed,
        "correct": correct,
        "p50_ms": 1e3 * statistics.median(latencies),
        "restarts": restarts,
        "p99_ms": 1e3 * statistics.quantiles(latencies, n=100)[98],
    }


def bench_math_verify(items: list[GradeItem], budget_s: float = 20.0) -> dict[str, float]:
    """math-verify alone: parse gold and response, verify; one core, in-process."""
    from math_verify import parse, verify

    t0, done, correct, lat = time.perf_counter(), 0, 0, []
    for it in items:
        t1 = time.perf_counter()
        gold = parse(it.gold if it.dataset == "math" else it.gold.split("####")[-1])
        correct += bool(verify(gold, parse(it.response)))
        lat.append(time.perf_counter() - t1)
        done += 1
        if time.perf_counter() - t0 > budget_s:
            break
    elapsed = time.perf_counter() - t0
    return {
        "n": done,
        "per_s": done / elapsed,
        "correct": correct,
        "p50_ms": 1e3 * statistics.median(lat),
        "p99_ms": 1e3 * statistics.quantiles(lat, n=100)[98],
        "restarts": 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="Answer shifts per problem.")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/grader.md")
    args = ap.parse_args()
    rows = []
    for dataset in ("gsm8k", "math"):
        items = load_items(dataset, args.repeat)
        pool = asyncio.run(bench_pool(items, args.workers))
        base = bench_math_verify(items)
        rows.append((dataset, pool, base))
        print(
            f"{dataset}: pool {pool['per_s']:.0f}/s p50 {pool['p50_ms']:.1f} ms "
            f"p99 {pool['p99_ms']:.1f} ms | math-verify {base['per_s']:.0f}/s"
        )
    write_report(args.out, rows, args.workers)


def write_report(path: Path, rows: list[tuple[str, dict, dict]], workers: int) -> None:
    lines = [
        "# Grader benchmark (`bench/grader.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Generated {time.strftime('%Y-%m-%d %H:%M')}; "
        f"1-min load average at the end: {os.getloadavg()[0]:.1f} (the cores are shared).",
        "",
        "Items: each gold solution of the test split against its own answer and against a "
        "shifted problem's answer (all distinct). Latency: one request of 64 items at a time.",
        "",
        "| dataset | grader | items | grades/s | p50 ms | p99 ms | correct | restarts |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset, pool, base in rows:
        for name, r, unit in (
            (f"sandboxed pool, {workers} workers", pool, "per 64-item request"),
            ("math-verify alone, 1 core, unsandboxed", base, "per item"),
        ):
            lines.append(
                f"| {dataset} | {name} ({unit} latency) | {r['n']} | {r['per_s']:.0f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['correct']} | "
                f"{r['restarts']} |"
            )
    lines += [
        "",
        "Targets: ≥ 2,000 GSM8K and ≥ 300 MATH grades/s on 2 workers. `correct` differs between",
        "the two graders because math-verify alone parses the whole solution text (no `####` /",
        "last-box extraction, no multi-answer or bracket rules).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
