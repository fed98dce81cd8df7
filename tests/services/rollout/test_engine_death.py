"""A dead engine is not a failed job. vLLM's engine core runs in a child process; when it dies
every later call fails, so a replica that answered jobs with those errors would swallow the
trainer's retries (seen in the containers step: a vLLM replica without a C++ compiler for
torch's inductor killed its core on the first sampled batch and the run failed). The adapter
turns vLLM's EngineDeadError into ``EngineDead``; the worker leaves the job for another
replica and stops (test_worker.py); the HTTP app answers 503 and stops being live or ready."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import NoReturn

import httpx
import psutil
import pytest

from services.rollout.app import create_app
from services.rollout.engine.base import EngineDead
from services.rollout.engine.torch_engine import TorchEngine
from services.rollout.settings import RolloutSettings
from shared.schemas import ErrorBody, SamplingParams
from tests.services.rollout.conftest import build_engine
from tests.support import serve_app

pytestmark = pytest.mark.server
GREEDY = SamplingParams(temperature=0.0, max_tokens=4)


class DeadEngine(TorchEngine):
    """A torch engine whose engine process has died: every call raises ``EngineDead``, as the
    vLLM adapter does on vLLM's EngineDeadError (below, for real). A fault injected here
    because the torch engine has no separate process to kill."""

    async def generate(self, *args: object, **kwargs: object) -> NoReturn:
        raise EngineDead("vLLM's engine core died: (injected)")

    async def continue_from(self, *args: object, **kwargs: object) -> NoReturn:
        raise EngineDead("vLLM's engine core died: (injected)")


@pytest.mark.slow
def test_vllm_engine_core_killed_raises_engine_dead(tiny_model_dir: Path) -> None:
    """SIGKILL vLLM's engine-core process (and its worker): the next call raises EngineDead."""

    async def scenario() -> None:
        engine = build_engine("vllm", tiny_model_dir)
        try:
            assert len(await engine.generate(["Question: 1+1=?\n"], 1, GREEDY)) == 1
            children = psutil.Process().children(recursive=True)
            cores = [p for p in children if "VLLM" in " ".join(p.cmdline()).upper()]
            assert cores, [p.cmdline() for p in children]  # vLLM names its processes VLLM::...
            for proc in cores:
                proc.kill()
            psutil.wait_procs(cores, timeout=30)
            with pytest.raises(EngineDead, match="engine core died"):
                for _ in range(20):  # the client notices the death on its next message
                    await engine.generate(["Question: 1+1=?\n"], 1, GREEDY)
                    await asyncio.sleep(0.5)
        finally:
            await engine.close()

    asyncio.run(scenario())


def test_http_app_with_a_dead_engine_is_503_and_not_live(
    tiny_model_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    settings = RolloutSettings(
        model_dir=tiny_model_dir, checkpoint_root=tmp_path, reward_url=reward_url
    )
    app = create_app(settings, engine=DeadEngine(tiny_model_dir, version=0))
    with serve_app(app) as url:
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        body = {"prompts": ["Question: 1+1=?\n"], "n": 1, "sampling": {"max_tokens": 4}}
        resp = httpx.post(f"{url}/v1/generate", json=body, timeout=30)
        assert resp.status_code == 503, resp.text
        error = ErrorBody.model_validate(resp.json())
        assert error.error == "engine_dead" and "engine core died" in error.message
        live = httpx.get(f"{url}/healthz", timeout=10)  # liveness: restart the process
        assert live.status_code == 503 and live.json()["state"] == "failed", live.text
        ready = ErrorBody.model_validate(httpx.get(f"{url}/readyz", timeout=10).json())
        assert ready.error == "not_ready" and "engine core died" in ready.message


@pytest.mark.redis
def test_http_app_whose_queue_worker_stops_is_not_live(
    tiny_model_dir: Path, reward_url: str, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """Any error that ends the queue worker (here Redis refuses the v0 stream: its key holds
    a string, WRONGTYPE) leaves a replica that serves no queue jobs: it must not stay
    "ready" but fail its liveness probe, naming the error, so that it is restarted."""
    asyncio.run(_set_key(redis_url, f"{key_prefix}jobs:v0", "not a stream"))
    settings = RolloutSettings(
        model_dir=tiny_model_dir,
        checkpoint_root=tmp_path,
        reward_url=reward_url,
        redis_url=redis_url,
        queue_prefix=key_prefix,
    )
    app = create_app(settings, engine=TorchEngine(tiny_model_dir, version=0))
    with serve_app(app) as url:
        for _ in range(100):
            live = httpx.get(f"{url}/healthz", timeout=10)
            if live.status_code == 503:
                break
            time.sleep(0.1)
        assert live.status_code == 503 and live.json()["state"] == "failed", live.text
        ready = ErrorBody.model_validate(httpx.get(f"{url}/readyz", timeout=10).json())
        assert "queue worker stopped" in ready.message and "WRONGTYPE" in ready.message


async def _set_key(url: str, key: str, value: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.set(key, value)
    finally:
        await client.aclose()
