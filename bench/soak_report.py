"""The soak bench's numbers: latency percentiles, memory growth per process, Redis
memory, and the printed summary. Pure functions over what bench/soak.py recorded."""

from __future__ import annotations

import contextlib
import platform
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.soak_load import Request


# -- numbers ---------------------------------------------------------------------------
def latency_stats(xs: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max in ms of a sorted list (nearest rank)."""
    if not xs:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}

    def rank(q: float) -> float:
        return round(1e3 * xs[min(len(xs) - 1, max(0, int(q * len(xs) + 0.999999) - 1))], 1)

    return {
        "n": len(xs),
        "p50_ms": rank(0.5),
        "p90_ms": rank(0.9),
        "p99_ms": rank(0.99),
        "max_ms": round(1e3 * xs[-1], 1),
        "mean_ms": round(1e3 * statistics.fmean(xs), 1),
    }


def memory_row(
    key: str, rss: list[tuple[float, float]], started: float, ended: float | None, end: str
) -> dict[str, Any]:
    """RSS of a process (tree): median of its first minute (after 10 s of warm-up) and of its
    last minute, the growth between them, its peak."""
    row: dict[str, Any] = {
        "process": key,
        "started_s": round(started, 1),
        "ended_s": None if ended is None else round(ended, 1),
        "end": end,
    }
    if not rss:
        return row | {"samples": 0}
    t_first, t_last = rss[0][0], rss[-1][0]
    if t_last - t_first < 20:  # killed (or ended) while still starting: no steady state
        return row | {
            "samples": len(rss),
            "life_s": round(t_last - t_first, 1),
            "peak_mb": round(max(m for _, m in rss), 1),
        }
    warm = [m for t, m in rss if t >= t_first + 10] or [m for _, m in rss]
    first = [m for t, m in rss if t_first + 10 <= t < t_first + 70] or warm[:1]
    last = [m for t, m in rss if t > t_last - 60] or warm[-1:]
    f, la = statistics.median(first), statistics.median(last)
    return row | {
        "samples": len(rss),
        "life_s": round(t_last - t_first, 1),
        "first_min_mb": round(f, 1),
        "last_min_mb": round(la, 1),
        "growth_mb": round(la - f, 1),
        "growth_pct": round(100 * (la - f) / f, 1),
        "peak_mb": round(max(m for _, m in rss), 1),
    }


def redis_memory(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    if not samples:
        return {}
    first = [s for s in samples if s[0] < samples[0][0] + 60]
    last = [s for s in samples if s[0] > samples[-1][0] - 60]
    return {
        "first_min_used_mb": round(statistics.median(s[1] for s in first), 2),
        "last_min_used_mb": round(statistics.median(s[1] for s in last), 2),
        "first_keys": first[0][2],
        "last_keys": last[-1][2],
    }


def count_by(xs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[str(x)] = out.get(str(x), 0) + 1
    return dict(sorted(out.items()))


def mean_value(answered: list[Request]) -> float | None:
    """Mean V(s) over every answered state (a sanity check: the tiny model is trained)."""
    values = [v for r in answered for v in r.values]
    return round(statistics.fmean(values), 4) if values else None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def summary(r: dict[str, Any]) -> str:
    q, lat = r["requests"], r["latency"]
    lines = [
        f"soak: {r['load_s']:.0f}s of load, {q['sent']} requests sent "
        f"({r['config']['rate']}/s, {r['config']['concurrency']} clients)",
        f"answered {q['answered']}  failed {q['failed']}  late {q['late']}  "
        f"LOST {q['lost']}  bad results {q['bad_results']}  "
        f"({q['throughput_per_s']}/s answered)",
        f"latency ms: p50 {lat['p50_ms']}  p90 {lat['p90_ms']}  p99 {lat['p99_ms']}  "
        f"max {lat['max_ms']}",
        "",
        f"{'event':<26} {'t (s)':>7} {'in flight':>9} {'answered after (s)':>18} "
        f"{'restart ready (s)':>17}",
    ]
    for ev in r["events"]:
        after = ",".join(str(j["answered_after_kill_s"]) for j in ev.get("inflight", []))
        ready = ev.get("restart_ready_s", ev.get("down_s", ""))
        n = len(ev.get("inflight_jobs", [])) if "inflight_jobs" in ev else "-"
        lines.append(f"{ev['what']:<26} {ev['t']:>7} {n!s:>9} {after or '-':>18} {ready!s:>17}")
    lines += [
        "",
        f"{'process':<32} {'life (s)':>8} {'first min MB':>12} {'last min MB':>11} "
        f"{'growth MB':>9} {'peak MB':>8}",
    ]
    for m in r["memory"]:
        if "first_min_mb" in m:
            lines.append(
                f"{m['process']:<32} {m['life_s']:>8} {m['first_min_mb']:>12} "
                f"{m['last_min_mb']:>11} {m['growth_mb']:>9} {m['peak_mb']:>8}"
            )
    rm = r["redis_memory"]
    if rm:
        lines.append(
            f"redis used_memory: {rm['first_min_used_mb']} → {rm['last_min_used_mb']} MB,"
            f" keys {rm['first_keys']} → {rm['last_keys']}"
        )
    lines.append(f"redis at the end: {r['redis_final']}")
    lines.append(f"replica logs: {r['replica_logs']}")
    if r["errors"]:
        lines.append(f"errors: {r['errors']}")
    return "\n".join(lines)
