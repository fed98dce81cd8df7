"""Trainer killed mid-push, then ``--resume``: the same run, and the replicas end on the
right version. Two crash points: ``kill -9`` after ``policy-v2/`` is written and before v2 is
announced (the replica still serves v1), and right after v2 is announced but before the
checkpoint of iteration 2 (the replica moves on to v2; the resumed run, back at v1, must take
it back: its announcements carry a later trainer generation).

The replicas outlive the trainer, as in a deployment: per run a private redis-server and one
real rollout worker running in this test process; the trainer to kill is a subprocess with
``--redis-url ... --local-replicas 0`` (the uninterrupted run is the same loop in-process).
The pause points are made by ``tests/services/trainer/client/push_hook.py``
(``VINEPPO_TEST_PAUSE_{BEFORE,AFTER}_ANNOUNCE=<version>:<marker>``, read only by that test
wrapper): it writes the marker at that point of the push of ``policy-v<version>`` and sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from services.reward.app import create_app as create_reward_app
from services.reward.client import RewardClient
from services.reward.settings import RewardSettings
from services.rollout.engine.torch_engine import TorchEngine
from services.rollout.worker import WorkerConfig, run_worker
from services.trainer.client.local_services import run_services
from services.trainer.client.weights import shard_digests
from services.trainer.config import load_config
from services.trainer.rl.loop import RLTrainer
from shared.queue import make_queue
from tests.services.rollout.tiny import make_tiny_model_dir
from tests.services.trainer.rl.test_loop import _rows
from tests.support import redis_process, serve_app

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[4]
DIST_VARS = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
KEYS = ("reward/mean", "loss/policy", "loss/value", "kl/ref", "entropy",
        "response/tokens_mean", "adv/std")  # fmt: skip
# PPO with the authors' random value head (advantages R - V vary from token to token even when
# a random policy earns no reward, so every push carries new weights; the default constant
# head would whiten them to 0) on a random tiny Llama, with the smallest budgets
SETS = ["algo=ppo", "ppo.critic_init=null", "iterations=2", "eval.every=100",
        "eval.num_problems=2",
        "eval.max_response_tokens=16", "rollout.prompts_per_iteration=4",
        "rollout.responses_per_prompt=2", "rollout.max_response_tokens=24",
        "ppo.mini_batch_size=8", "ppo.micro_batch_size=8", "ppo.epochs=1",
        "optim.lr=1e-3"]  # fmt: skip
VOCAB = ["Question: Ann has 7 apples. Ann finds 5 more. How many?\nAnswer:\n7 + 5 = 12\n#### 12"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", vocab_texts=VOCAB)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


async def _replica(
    redis_url: str, reward_url: str, model: Path, root: Path, stop: asyncio.Event
) -> asyncio.Task[None]:
    """A rollout replica that outlives the trainer: a real worker in this test process."""
    config = WorkerConfig(replica_id="replica", heartbeat_s=0.25, checkpoint_root=root)
    engine = await asyncio.to_thread(TorchEngine, model)
    queue = make_queue(redis_url)
    return asyncio.create_task(run_worker(queue, engine, RewardClient(reward_url), config, stop))


def _trainer(
    model: Path,
    out: Path,
    redis_url: str,
    reward_url: str,
    *extra: str,
    pause: str | None = None,
    when: str = "BEFORE",
) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "tests.services.trainer.client.push_hook",
        "train",
        "--preset",
        "tiny-cpu",
        "--output-dir",
        str(out),
        "--threads",
        "1",
        "--redis-url",
        redis_url,
        "--reward-url",
        reward_url,
        "--local-replicas",
        "0",
        *extra,
        "--set",
        f"model.policy={model}",
    ]
    for s in SETS:
        args += ["--set", s]
    env = _env() | ({f"VINEPPO_TEST_PAUSE_{when}_ANNOUNCE": pause} if pause else {})
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "trainer.log").open("a")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log, text=True)


async def _finish(proc: subprocess.Popen[str], out: Path) -> None:
    code = await asyncio.to_thread(proc.wait, 300)
    assert code == 0, (out / "trainer.log").read_text()[-4000:]


async def _straight(model: Path, out: Path, redis_url: str, reward_url: str) -> None:
    """The uninterrupted run, in this process (same loop, same replica setup)."""
    sets = [*SETS, f"model.policy={model}", f"output_dir={out}"]
    cfg = load_config(preset="tiny-cpu", overrides=sets)
    services = run_services(
        model, out / "policies", redis_url=redis_url, reward_url=reward_url, local_replicas=0
    )
    async with services as svc:
        await RLTrainer(cfg, svc, progress=False).run()


async def _served(redis_url: str) -> list[tuple[str, int]]:
    queue = make_queue(redis_url)
    try:
        return [(r.state, r.loaded_version) for r in await queue.list_replicas()]
    finally:
        await queue.close()


@pytest.mark.parametrize("when", ["BEFORE", "AFTER"])
async def test_kill_9_mid_push_then_resume_gives_the_same_run(
    tiny_model: Path, tmp_path: Path, when: str
) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    marker = tmp_path / f"paused-{when}-announcing-v2"
    stop = asyncio.Event()
    with ExitStack() as stack:
        reward = stack.enter_context(serve_app(create_reward_app(RewardSettings(workers=1))))
        ra, rb = stack.enter_context(redis_process()), stack.enter_context(redis_process())
        replicas = [
            await _replica(r.url, reward, tiny_model, out / "policies", stop)
            for r, out in ((ra, straight), (rb, killed))
        ]
        try:
            # 1) the run to be killed (a subprocess) and the uninterrupted one, side by side
            b = _trainer(tiny_model, killed, rb.url, reward, pause=f"2:{marker}", when=when)
            a = asyncio.create_task(_straight(tiny_model, straight, ra.url, reward))
            deadline = time.monotonic() + 300
            while not marker.is_file():
                assert b.poll() is None, (killed / "trainer.log").read_text()[-4000:]
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            b.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(b.wait, 30) == -signal.SIGKILL
            # 2) the crash point: v2 complete on disk, the checkpoint still at iteration 1; the
            # replica serves v1 (not announced) or moves on to v2 (announced)
            assert (killed / "policies" / "policy-v2" / "model.safetensors").is_file()
            assert (killed / "checkpoints" / "latest").read_text().strip() == "1"
            served = 1 if when == "BEFORE" else 2
            while await _served(rb.url) != [("ready", served)]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            # 3) resume: the same run from the checkpoint of iteration 1
            t0 = time.monotonic()
            await _finish(_trainer(tiny_model, killed, rb.url, reward, "--resume"), killed)
            resume_s = time.monotonic() - t0
            await a
            final_a, final_b = await _served(ra.url), await _served(rb.url)
        finally:
            stop.set()
            await asyncio.gather(*replicas, return_exceptions=True)
    rows_a, rows_b = _rows(straight), _rows(killed)
    print(f"\nresume took {resume_s:.1f}s; replicas: straight {final_a}, resumed {final_b}")
    assert sorted(rows_b) == sorted(rows_a) == [0, 1, 2]
    for it in (1, 2):
        assert rows_b[it]["version"] == rows_a[it]["version"] == it
        for key in KEYS:
            assert rows_b[it][key] == pytest.approx(rows_a[it][key], rel=1e-5, abs=1e-7), key
    # the replicas end on v2, and v2 is the same policy, byte for byte, in both runs
    assert final_a == final_b == [("ready", 2)]
    pa, pb = straight / "policies" / "policy-v2", killed / "policies" / "policy-v2"
    assert shard_digests(pa) == shard_digests(pb)
    assert shard_digests(pa) != shard_digests(pa.parent / "policy-v1")  # the update moved it
