"""The whole RL loop under ``torchrun --nproc_per_node 2`` (gloo, CPU) through real services.

Rank 0 owns the services (in-process reward and replica, or a Redis queue with a separate
replica), the other rank gets rank 0's episodes and advantages by broadcast. Each run of 3
iterations (VinePPO and PPO, the demo's SFT model data/demo-sft: 3.5 MB, it earns rewards, so
every iteration updates the policy) must end with the metrics and the policy-v3 weights of a
1-rank run of the same seed, to the tolerance the update-level test uses
(runtime/test_distributed.py: 2 ranks' PPO epochs equal one process's to rel 1e-4, abs 2e-5):
the W ranks take the same optimizer steps, so the policy they push samples the same tokens.
The Redis run is also killed (``kill -9`` of rank 1's process group) once iteration 1 is
checkpointed, and ``--resume`` must end on the same metrics. A config that cannot split over
the launcher's ranks fails at start-up, in one line, on every rank.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.reward.app import create_app as create_reward_app
from services.reward.client import RewardClient
from services.reward.settings import RewardSettings
from services.rollout.engine import make_engine
from services.rollout.worker import WorkerConfig, run_worker
from shared.queue import make_queue
from tests.support import free_port, redis_process, serve_app

pytestmark = [pytest.mark.slow, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[4]
MODEL = ROOT / "data" / "demo-sft"
DIST_VARS = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
SETS = [
    "iterations=3",
    "eval.every=3",
    "eval.num_problems=4",
    "eval.max_response_tokens=40",
    "rollout.prompts_per_iteration=4",
    "rollout.responses_per_prompt=2",
    "rollout.max_response_tokens=40",
    "ppo.mini_batch_size=8",
    "ppo.micro_batch_size=4",
    "vine.k=2",
    "optim.lr=1e-4",
]
KEYS = (
    "reward/mean",
    "loss/policy",
    "kl/ref",
    "entropy",
    "response/tokens_mean",
    "adv/mean",
    "adv/std",
    "value/num_states",
    "value/mc_tokens",
    "loss/value",
    "acc/val",
)
TIMEOUT_S = 400


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}  # this process's group
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cmd(ranks: int, model: Path, out: Path, algo: str, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "services.cli"]
    if ranks > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(ranks),
            "--master_port",
            str(free_port()),
            "-m",
            "services.cli",
        ]
    args = [
        *launcher,
        "train",
        "--algo",
        algo,
        "--preset",
        "tiny-cpu",
        "--output-dir",
        str(out),
        "--threads",
        "1",
        "--set",
        f"model.policy={model}",
    ]
    for s in SETS:
        args += ["--set", s]
    return [*args, *extra]  # after SETS: an extra --set wins


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=f, stderr=f)


async def _finish(proc: subprocess.Popen[bytes], log: Path) -> None:
    code = await asyncio.to_thread(proc.wait, TIMEOUT_S)
    assert code == 0, log.read_text()[-4000:]


def _rows(out: Path) -> dict[int, dict[str, object]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {int(r["iteration"]): r for r in rows}


def assert_same_run(got: Path, want: Path) -> None:
    a, b = _rows(want), _rows(got)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for it in a:
        assert b[it]["version"] == a[it]["version"] == it
        for key in (k for k in KEYS if k in a[it]):
            assert b[it][key] == pytest.approx(a[it][key], rel=1e-4, abs=2e-5), (it, key)
    assert a[3]["kl/ref"] > 0 and a[1]["adv/std"] > 0  # the policy moved: not a trivial match
    weights = "policies/policy-v3/model.safetensors"
    got_w, want_w = load_file(got / weights), load_file(want / weights)
    assert got_w.keys() == want_w.keys()
    for name in want_w:
        torch.testing.assert_close(got_w[name], want_w[name], rtol=1e-4, atol=2e-5)


_one_rank: dict[str, Path] = {}


def one_rank_run(root: Path, algo: str, model: Path = MODEL) -> Path:
    """The 1-rank, in-process run of ``algo`` (made once per module)."""
    if algo not in _one_rank:
        out = root / f"one-{algo}"
        out.mkdir(parents=True)
        proc = _start(_cmd(1, model, out, algo), out / "log")
        asyncio.run(_finish(proc, out / "log"))
        _one_rank[algo] = out
    return _one_rank[algo]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("algo", ["vine", "ppo"])
def test_two_ranks_in_process_services_match_one_rank(
    runs: Path,
    algo: str,
) -> None:
    """No Redis: rank 0 starts the reward service and the replica; 3 iterations as 1 rank."""
    out = runs / f"two-{algo}-in-process"
    out.mkdir()
    t0 = time.monotonic()
    asyncio.run(_finish(_start(_cmd(2, MODEL, out, algo), out / "log"), out / "log"))
    print(f"\n2 ranks in-process, {algo}: {time.monotonic() - t0:.1f}s")
    assert_same_run(out, one_rank_run(runs, algo))


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of ``rank`` among the launcher's children (each in its own process group)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.redis
@pytest.mark.parametrize("algo", ["vine", "ppo"])
def test_two_ranks_over_redis_killed_and_resumed_match_one_rank(
    runs: Path,
    algo: str,
) -> None:
    """Redis queue, a separate replica (in this process) and reward service: the 2-rank run
    is killed (``kill -9`` of rank 1's process group) once iteration 1 is checkpointed, then
    ``--resume`` finishes it; its metrics are the 1-rank in-process run's."""
    out = runs / f"two-{algo}-redis"
    out.mkdir()
    log = out / "log"

    async def main(redis_url: str, reward_url: str) -> None:
        stop = asyncio.Event()
        root = out / "policies"
        config = WorkerConfig(replica_id="replica", heartbeat_s=0.25, checkpoint_root=root)
        engine = await asyncio.to_thread(make_engine, "auto", MODEL, device="cpu")
        queue = make_queue(redis_url)
        worker = asyncio.create_task(
            run_worker(queue, engine, RewardClient(reward_url), config, stop)
        )
        wiring = [
            "--redis-url",
            redis_url,
            "--reward-url",
            reward_url,
            "--local-replicas",
            "0",
            "--checkpoint-root",
            str(root),
        ]
        try:
            proc = _start(_cmd(2, MODEL, out, algo, *wiring), log)
            latest = out / "checkpoints" / "latest"
            deadline = time.monotonic() + TIMEOUT_S
            while not (latest.is_file() and latest.read_text().strip() == "1"):
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            pid = _rank_pid(proc.pid, 1)
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            assert await asyncio.to_thread(proc.wait, 120) != 0  # the launcher ends the run
            t0 = time.monotonic()
            await _finish(_start(_cmd(2, MODEL, out, algo, *wiring, "--resume"), log), log)
            print(f"\n2 ranks over Redis, {algo}: resume took {time.monotonic() - t0:.1f}s")
        finally:
            stop.set()
            await asyncio.gather(worker, return_exceptions=True)
            await engine.close()

    with redis_process() as redis, serve_app(create_reward_app(RewardSettings())) as reward:
        asyncio.run(main(redis.url, reward))
    assert_same_run(out, one_rank_run(runs, algo))


def test_batch_that_cannot_split_over_the_ranks_fails_at_start_up(tmp_path: Path) -> None:
    """mini-batch 8 of micro-batches 8 cannot split over 2 ranks: the ranks exit at once with
    one line naming the sizes (no traceback of ours), before a service starts or a model
    loads. (Before, each rank started a reward service and built a replica's engine, then
    RLTrainer's re-check failed with the same line: 35 s instead of 8 s here.)"""
    t0 = time.monotonic()
    sets = ["--set", "ppo.mini_batch_size=8", "--set", "ppo.micro_batch_size=8"]
    args = _cmd(2, MODEL, tmp_path / "run", "vine", *sets)
    proc = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode != 0
    want = (
        "Error: invalid setting: RunConfig.(whole model): ppo.mini_batch_size (8) must be a "
        "multiple of ppo.micro_batch_size × world size (8 × 2 = 16)"
    )
    # each rank prints it (one may be stopped by the launcher first)
    assert want in proc.stderr.splitlines(), proc.stderr[-4000:]
    assert f'File "{ROOT / "services"}' not in proc.stderr  # the launcher's traceback only
    assert "services.rollout.engine" not in proc.stderr  # no replica's engine was built
    assert not (tmp_path / "run" / "policies").exists()  # nothing was pushed
    print(f"\nstart-up error after {took:.1f}s")
    assert took < 60, took
