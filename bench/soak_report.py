"""The soak bench's numbers: latency percentiles, memory growth per process, Redis
memory, and the printed summary. Pure functions over what bench/soak.py recorded."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.soak_stack import LOG_MARKS, RECLAIMED

if TYPE_CHECKING:
    from bench.soak_load import Load, Request
    from bench.soak_stack import SoakRecord


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


def consumer_stats(samples: list[tuple[float, dict[int, int]]], warm_s: float) -> dict[str, Any]:
    """Consumers of the group over the run (all job streams together): at the start, the most
    after ``warm_s`` of warm-up, in the last minute."""
    if not samples:
        return {}
    total = [(t, sum(c.values())) for t, c in samples]
    warm = [n for t, n in total if t >= warm_s] or [total[-1][1]]
    last = [n for t, n in total if t > total[-1][0] - 60]
    return {
        "first": total[0][1],
        "max_after_warm_up": max(warm),
        "median_after_warm_up": statistics.median(warm),
        "last_min_max": max(last),
        "per_stream_at_end": samples[-1][1],
    }


def redis_after_warm_up(samples: list[tuple[float, float, int]], warm_s: float) -> dict[str, Any]:
    """Redis ``used_memory`` after ``warm_s``: per 5-minute window, the median (MB) and the
    key count, so a slope is visible; and the overall max."""
    warm = [s for s in samples if s[0] >= warm_s]
    if not warm:
        return {}
    windows = []
    for start in range(int(warm_s), int(warm[-1][0]) + 1, 300):
        w = [s for s in warm if start <= s[0] < start + 300]
        if w:
            used = round(statistics.median(s[1] for s in w), 3)
            keys = int(statistics.median(s[2] for s in w))
            windows.append({"from_s": start, "used_mb": used, "keys": keys})
    return {
        "max_used_mb": round(max(s[1] for s in warm), 3),
        "max_keys": max(s[2] for s in warm),
        "windows": windows,
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
        f"LOST {q['lost']}  STALE {q['stale']}  bad results {q['bad_results']}  "
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
    if r.get("redis_after_warm_up"):
        lines.append(f"redis after warm-up: {r['redis_after_warm_up']}")
    if r.get("consumers"):
        lines.append(f"consumers: {r['consumers']}")
    lines.append(f"redis at the end: {r['redis_final']}")
    lines.append(f"replica logs: {r['replica_logs']}")
    if r["errors"]:
        lines.append(f"errors: {r['errors']}")
    return "\n".join(lines)


# -- the result document ---------------------------------------------------------------
def build_report(
    soak: SoakRecord, load: Load, final: dict[str, Any], setup_s: float, t_load_end: float
) -> dict[str, Any]:
    a, reqs = soak.args, load.requests
    by = {s: [r for r in reqs if r.status == s] for s in ("answered", "failed", "late", "lost")}
    lat = sorted(r.latency for r in by["answered"] if r.latency is not None)
    minutes = []
    for m in range(int(-(-a.minutes * 60 // 60))):
        rs = [r for r in reqs if m * 60 <= r.t_submit < (m + 1) * 60]
        ls = sorted(r.latency for r in rs if r.status == "answered" and r.latency is not None)
        minutes.append(
            {
                "minute": m + 1,
                "sent": len(rs),
                "answered": sum(r.status == "answered" for r in rs),
                "not_answered": sum(r.status != "answered" for r in rs),
                **latency_stats(ls),
            }
        )
    for ev in soak.events:  # what became of each killed replica's in-flight jobs
        jobs = []
        for job_id in ev.get("inflight_jobs", []):
            r = next((q for q in reqs if q.job_id == job_id), None)
            if r is not None:
                jobs.append(
                    {
                        "job_id": job_id,
                        "status": r.status,
                        "worker": r.worker,
                        "latency_s": None if r.latency is None else round(r.latency, 2),
                        "answered_after_kill_s": None
                        if r.t_done is None
                        else round(r.t_done - ev["t"], 2),
                    }
                )
        if "inflight_jobs" in ev:
            ev["inflight"] = jobs
        if ev["what"].startswith("SIGKILL redis"):  # when answers flowed again
            up = ev["t"] + ev["down_s"]
            after = [r.t_done for r in reqs if r.t_done is not None and r.t_done > up]
            ev["first_answer_after_restart_s"] = round(min(after) - up, 2) if after else None
            around = [
                r.latency for r in reqs if r.latency is not None and ev["t"] - 5 <= r.t_submit <= up
            ]
            ev["max_latency_of_requests_sent_5s_before_to_restart_s"] = (
                round(max(around), 2) if around else None
            )
    logs = {k: 0 for k in [*LOG_MARKS, "reclaimed_jobs"]}
    for p in soak.stack.procs:
        if p.role.startswith("replica") and p.log.exists():
            text = p.log.read_text(errors="replace")
            for k, mark in LOG_MARKS.items():
                logs[k] += text.count(mark)
            logs["reclaimed_jobs"] += sum(int(n) for n in RECLAIMED.findall(text))
    reward_log = "".join(
        p.log.read_text(errors="replace")
        for p in soak.stack.procs
        if p.role == "reward" and p.log.exists()
    )
    memory = [memory_row(p.key, p.rss, p.started, p.ended, p.end) for p in soak.stack.procs]
    memory.append(memory_row("load generator (this process)", soak.client_rss, 0.0, None, ""))
    answered_late = [r for r in by["late"]]
    total = len(reqs)
    return {
        "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "arch": platform.machine(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "config": {k: v for k, v in vars(a).items() if k != "out"} | {"out": str(a.out)},
        "setup_s": round(setup_s, 1),
        "load_s": round(t_load_end, 1),
        "requests": {
            "sent": total,
            "answered": len(by["answered"]),
            "failed": len(by["failed"]),
            "late": len(answered_late),
            "lost": len(by["lost"]),
            "bad_results": sum(r.bad is not None for r in reqs),
            "stale": sum(r.stale for r in reqs),
            "by_version": count_by(r.version for r in reqs),
            "throughput_per_s": round(len(by["answered"]) / max(t_load_end, 1e-9), 3),
            "behind_schedule": len(load.behind),
            "behind_max_s": round(max(load.behind, default=0.0), 2),
        },
        "latency": latency_stats(lat),
        "worker_s": latency_stats(
            sorted(r.worker_s for r in by["answered"] if r.worker_s is not None)
        ),
        "served_by": count_by(r.worker for r in by["answered"]),
        "failures": [{"job_id": r.job_id, "error": r.error} for r in by["failed"]],
        "late": [
            {
                "job_id": r.job_id,
                "t_submit": round(r.t_submit, 2),
                "latency_s": round(r.latency or 0, 2),
            }
            for r in answered_late
        ],
        "lost": [
            {"job_id": r.job_id, "t_submit": round(r.t_submit, 2), "error": r.error}
            for r in by["lost"]
        ],
        "bad": [{"job_id": r.job_id, "why": r.bad} for r in reqs if r.bad],
        "mean_value": mean_value(by["answered"]),
        "events": soak.events,
        "per_minute": minutes,
        "restart_ready_s": {
            p.key: round(p.ready_after_s, 2)
            for p in soak.stack.procs
            if p.ready_after_s is not None
        },
        "memory": memory,
        "redis_memory": redis_memory(soak.redis_mem),
        "redis_after_warm_up": redis_after_warm_up(soak.redis_mem, a.warm_up_s),
        "consumers": consumer_stats(soak.consumers, a.warm_up_s),
        "pushes": [e for e in soak.events if str(e["what"]).startswith("push")],
        "redis_final": final,
        "replica_logs": logs,
        "reward_log_tracebacks": reward_log.count("Traceback"),
        "errors": soak.errors,
        "series": {
            "rss_mb": {p.key: p.rss for p in soak.stack.procs} | {"client": soak.client_rss},
            "redis_used_mb_keys": soak.redis_mem,
            "consumers": soak.consumers,
        },
    }
