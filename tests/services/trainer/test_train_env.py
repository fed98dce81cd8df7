"""`vineppo train` configured only by the ``VINEPPO_TRAINER_*`` variables compose and the chart
set, against real services on loopback, in the multi-container shape: a redis-server with
``--requirepass``, a reward service and a rollout service (API + queue worker, its own
checkpoint root) that both require a bearer token, and the trainer as a subprocess with no
local replica. One iteration: the policy lands on the shared checkpoint root (not in the run
directory), the remote replica loads it from there and serves v1. A wrong rollout token stops
the trainer at start, before the model loads."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.reward.app import create_app as reward_app
from services.reward.settings import RewardSettings
from services.rollout.app import create_app as rollout_app
from services.rollout.settings import RolloutSettings
from shared.serve import free_port
from tests.support import serve_app

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "redis-pass-0123456789"
ROLLOUT_TOKEN = "rollout-token-0123456789"
REWARD_TOKEN = "reward-token-0123456789"


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.services.trainer.tiny_sft import tiny_sft_model

    return tiny_sft_model(tmp_path_factory)


@contextlib.contextmanager
def redis_with_password(workdir: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found on PATH (.ci/run installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            PASSWORD,
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def stack(model: Path, tmp: Path) -> Iterator[dict[str, str]]:
    """redis (password), reward (token), rollout replica (token, own checkpoint root)."""
    shared = tmp / "volume"  # the checkpoints volume both containers mount
    shared.mkdir()
    with contextlib.ExitStack() as es:
        port = es.enter_context(redis_with_password(tmp))
        reward = es.enter_context(
            serve_app(
                reward_app(RewardSettings(workers=1, require_token=True, api_token=REWARD_TOKEN))
            )
        )
        rollout_settings = RolloutSettings(
            model_dir=model,
            redis_url=f"redis://127.0.0.1:{port}/0",
            redis_password=PASSWORD,
            reward_url=reward,
            reward_api_token=REWARD_TOKEN,
            checkpoint_root=shared,
            api_token=ROLLOUT_TOKEN,
            require_token=True,
            max_batch=16,
        )
        rollout = es.enter_context(serve_app(rollout_app(rollout_settings)))
        yield {
            "VINEPPO_TRAINER_REDIS_URL": f"redis://127.0.0.1:{port}/0",  # no password in it
            "VINEPPO_TRAINER_REDIS_PASSWORD": PASSWORD,
            "VINEPPO_TRAINER_REWARD_URL": reward,
            "VINEPPO_TRAINER_REWARD_API_TOKEN": REWARD_TOKEN,
            "VINEPPO_TRAINER_ROLLOUT_URL": rollout,
            "VINEPPO_TRAINER_API_TOKEN": ROLLOUT_TOKEN,
            "VINEPPO_TRAINER_CHECKPOINT_ROOT": str(shared),
            "VINEPPO_TRAINER_LOCAL_REPLICAS": "0",
            "VINEPPO_TRAINER_ROLLOUT_TIMEOUT_S": "120",
        }


def _train(model: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    sets = [
        f"model.policy={model}",
        "iterations=1",
        "eval.every=100",
        "rollout.prompts_per_iteration=4",
        "rollout.responses_per_prompt=2",
        "rollout.max_response_tokens=24",
        "ppo.mini_batch_size=8",
        "ppo.micro_batch_size=4",
        "vine.k=2",
        "eval.num_problems=4",
        "eval.max_response_tokens=24",
    ]
    args = [
        sys.executable,
        "-m",
        "services.cli",
        "train",
        "--algo",
        "vine",
        "--preset",
        "tiny-cpu",
        "--output-dir",
        str(out),
        "--threads",
        "1",
    ]
    for s in sets:
        args += ["--set", s]
    dist_vars = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in dist_vars and not k.startswith("VINEPPO_TRAINER_")
    }
    full = base | {"OMP_NUM_THREADS": "1"} | env
    return subprocess.run(args, env=full, cwd=ROOT, timeout=600, capture_output=True, text=True)


def test_train_runs_on_env_alone_in_the_multi_container_shape(
    tiny_sft: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with stack(tiny_sft, tmp_path) as env:
        # a wrong API token: refused by the rollout (REQUIRE_TOKEN) before the model loads
        bad = _train(tiny_sft, tmp_path / "bad", env | {"VINEPPO_TRAINER_API_TOKEN": "x" * 24})
        assert bad.returncode == 2, bad.stderr[-3000:]
        assert "refused the API token" in bad.stderr and "x" * 24 not in bad.stderr
        assert not (tmp_path / "bad" / "metrics.jsonl").exists()

        proc = _train(tiny_sft, out, env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert f"rollout service at {env['VINEPPO_TRAINER_ROLLOUT_URL']} ready" in proc.stderr
        health = httpx.get(env["VINEPPO_TRAINER_ROLLOUT_URL"] + "/readyz", timeout=10).json()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["iteration"] > 0] == [1]
    shared = Path(env["VINEPPO_TRAINER_CHECKPOINT_ROOT"])
    assert (shared / "policy-v1" / "model.safetensors").is_file()  # on the shared volume
    assert not (out / "policies").exists()  # not in the run directory
    assert health["version"] == 1  # the remote replica loaded v1 from the volume
    # the run graded through the token-guarded reward service and queued through the
    # password-guarded Redis: neither secret may reach the logs
    for secret in (PASSWORD, ROLLOUT_TOKEN, REWARD_TOKEN):
        assert secret not in proc.stderr and secret not in proc.stdout
