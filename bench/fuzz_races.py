"""The two attack phases of ``bench/fuzz.py`` after the schema fuzzing, each against real
uvicorn servers on 127.0.0.1:

- ``grader_under_attack``: the reward service with its default pool (2 sandboxed workers,
  2 s limit); every structural attack of ``tests/fuzz_attacks.py`` and normal items, one item
  per request, ``clients`` requests at a time. Measured: each request's latency (must stay
  within the limit + 1 s), statuses (none ≥ 500), verdicts against the expected ones, worker
  restarts.
- ``pushes_under_race``: a rollout service (torch engine, tiny model); per round, at once: a
  slow float32 push of v+1 (many shards), 50 ms later a float16 push of v+2, refused pushes
  (a FIFO shard, ``../../etc``, NaN weights, a version past 2**53, the served version with
  other bytes, a stale version) and generate requests. After each round the replica must
  serve v+2 (no rollback) and be ready; no answer may be ≥ 500 (a request without an answer
  within 30 s is counted as a 599).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fuzz_attacks import NORMAL, grader_attacks

LIMIT_S = 2.0  # the reward service's default timeout_s


@dataclass
class PhaseReport:
    name: str
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # ≥ 500
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


async def grader_under_attack(
    url: str, headers: dict[str, str], *, clients: int = 20, normal: int = 40, seed: int = 0
) -> PhaseReport:
    """Every attack once plus ``normal`` ordinary items, shuffled, ``clients`` at a time."""
    items = grader_attacks() + (NORMAL * normal)[:normal]
    random.Random(seed).shuffle(items)
    report, slots = PhaseReport("grader under attack"), asyncio.Semaphore(clients)
    latencies: list[tuple[float, str, bool]] = []  # (s, name, normal?)
    wrong: list[str] = []
    cpu0, load0 = _children_cpu(), os.getloadavg()[0]
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=60) as http:

        async def one(name: str, response: str, gold: str, dataset: str, want: str | None) -> None:
            body = {"items": [{"response": response, "gold": gold, "dataset": dataset}]}
            async with slots:
                t = time.monotonic()
                try:
                    resp = await http.post(f"{url}/v1/grade", json=body, headers=headers)
                except httpx.HTTPError as exc:  # no answer at all: a finding, never a crash
                    resp = httpx.Response(599, text=f"no answer: {type(exc).__name__}")
                latencies.append((time.monotonic() - t, name, name.startswith("normal")))
            report.requests += 1
            report.statuses[resp.status_code] += 1
            if resp.status_code >= 500:
                report.server_errors.append(f"{name}: {resp.status_code} {resp.text[:200]}")
            elif resp.status_code == 200:
                status = resp.json()["verdicts"][0]["status"]
                if want is not None and status != want:
                    wrong.append(f"{name}: {status}, expected {want}")

        await asyncio.gather(*(one(*a) for a in items))
        metrics = (await http.get(f"{url}/metrics")).text
    report.seconds = time.monotonic() - t0
    cpu = {pid: t - cpu0.get(pid, 0.0) for pid, t in _children_cpu().items()}
    lat = sorted(latencies, reverse=True)
    normal_lat = [t for t, _, is_normal in latencies if is_normal]
    restarts = next(
        (ln.split()[-1] for ln in metrics.splitlines() if ln.startswith("reward_pool_restarts")),
        "?",
    )
    report.notes = {
        "attacks": len(items) - normal,
        "normal items": normal,
        "clients": clients,
        "max latency (s)": round(lat[0][0], 2),
        "slowest": lat[0][1],
        "p50 latency (s)": round(lat[len(lat) // 2][0], 3),
        "max latency of normal items (s)": round(max(normal_lat, default=0.0), 2),
        f"over the limit + 1 s ({LIMIT_S + 1:g} s)": sum(t > LIMIT_S + 1 for t, _, _ in lat),
        "unexpected verdicts": wrong,
        "worker restarts": restarts,
        "grader CPU (s, processes alive at the end)": round(sum(cpu.values()), 2),
        "grader CPU per request (ms)": round(1e3 * sum(cpu.values()) / max(len(items), 1), 1),
        "load average at start / end": f"{load0:.1f} / {os.getloadavg()[0]:.1f}",
        "niceness of the bench": os.nice(0),
    }
    return report


def _children_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of every process below this one: the grader workers (the
    reward service runs in a thread here); a worker killed meanwhile is not counted."""
    import psutil

    out: dict[int, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        out[proc.pid] = t.user + t.system
    return out


async def _post(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """The answer, or a 599 standing for none (a hung request is a finding, not a crash)."""
    try:
        return await http.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        return httpx.Response(599, text=f"no answer within 30 s: {type(exc).__name__}")


def make_policies(model_dir: Path, root: Path, slow_shards: int) -> None:
    """The policies the push rounds use (version numbers come with each push, not the path)."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.services.rollout.tiny import save_weights

    save_weights(model_dir, root / "slow", seed=1)
    for i in range(slow_shards):  # identical copies: slow to read and hash, load fine
        shutil.copyfile(
            root / "slow" / "model.safetensors", root / "slow" / f"s-{i:04d}.safetensors"
        )
    for name, seed in (("fast", 2), ("other", 3), ("nan", 4)):
        save_weights(model_dir, root / name, seed=seed)
    fast = load_file(root / "fast" / "model.safetensors")
    save_file(
        {k: v.to(torch.float16) for k, v in fast.items()}, root / "fast" / "model.safetensors"
    )
    poisoned = load_file(root / "nan" / "model.safetensors")
    poisoned[sorted(poisoned)[0]].view(-1)[0] = float("nan")
    save_file(poisoned, root / "nan" / "model.safetensors")
    (root / "fifo").mkdir()
    os.mkfifo(root / "fifo" / "model.safetensors")


async def pushes_under_race(
    url: str, headers: dict[str, str], *, rounds: int = 10, generates: int = 12
) -> PhaseReport:
    """See the module docstring; the checkpoint root must hold ``make_policies``' dirs."""
    report = PhaseReport("concurrent pushes")
    rollbacks: list[str] = []
    unready: list[str] = []
    outcomes: Counter[str] = Counter()
    gen = {"prompts": ["Question: 1+1=?\n"], "sampling": {"temperature": 0.0, "max_tokens": 4}}
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        served = int((await http.get(f"{url}/healthz")).json()["version"])
        for r in range(rounds):
            v = served + 10

            async def push(
                version: int, path: str, delay: float = 0.0, label: str = ""
            ) -> tuple[str, httpx.Response]:
                await asyncio.sleep(delay)
                body = {"version": version, "path": path}
                return label or path, await _post(http, f"{url}/v1/weights", body, headers)

            async def generate() -> tuple[str, httpx.Response]:
                return "generate", await _post(http, f"{url}/v1/generate", gen, headers)

            calls = [
                push(v + 1, "slow"),
                push(v + 2, "fast", 0.05),
                push(v + 3, "fifo", 0.02),
                push(v + 3, "../../etc", 0.02),
                push(v + 3, "nan", 0.02),
                push(2**70, "fast", 0.02, "version 2**70"),
                push(served, "other", 0.0, "served version, other bytes"),
                push(max(served - 1, 0), "fast", 0.01, "stale version"),
            ]
            calls += [generate() for _ in range(generates)]
            for label, resp in await asyncio.gather(*calls):
                report.requests += 1
                report.statuses[resp.status_code] += 1
                outcomes[f"{label}: {resp.status_code}"] += 1
                if resp.status_code >= 500:
                    report.server_errors.append(f"round {r} {label}: {resp.text[:200]}")
            ready = await http.get(f"{url}/readyz")
            served = int((await http.get(f"{url}/healthz")).json()["version"] or 0)
            if served != v + 2:
                rollbacks.append(f"round {r}: serves v{served}, expected v{v + 2}")
            if ready.status_code != 200:
                unready.append(f"round {r}: {ready.text[:200]}")
    report.seconds = time.monotonic() - t0
    report.notes = {
        "rounds": rounds,
        "requests per round": 8 + generates,
        "rollbacks": rollbacks,
        "unready after a round": unready,
        "outcomes": dict(sorted(outcomes.items())),
    }
    return report
