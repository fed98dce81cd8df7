"""Weight pushes under race and attack, on a real uvicorn server with a real torch engine (the
queue path with a real redis-server): concurrent pushes never roll a replica back, a FIFO
shard cannot hang it, a refused push changes nothing, versions are bounded and name one set
of weights, NaN/inf weights are refused, temperatures stop where every engine stops."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from services.rollout.app import create_app
from services.rollout.engine.torch_engine import TorchEngine
from services.rollout.settings import RolloutSettings
from shared.queue import make_queue
from shared.schemas import ErrorBody, WeightsAnnouncement
from tests.services.rollout.tiny import make_tiny_model_dir, save_weights
from tests.support import RedisProcess, serve_app

pytestmark = pytest.mark.server
TOKEN = "push-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXTS = ["Question: 2+3=?\nAnswer: 2+3=5\n#### 5", "Question: 7*6=?\n7*6=42\n#### 42"]
GREEDY = {"prompts": ["Question: 2+3=?\n"], "sampling": {"temperature": 0.0, "max_tokens": 8}}
SLOW_COPIES = 600  # shards of a policy that takes ~0.3 s to read and hash (264 MB)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", vocab_texts=TEXTS)


def settings(model_dir: Path, root: Path, **kw: object) -> RolloutSettings:
    return RolloutSettings(
        model_dir=model_dir,
        checkpoint_root=root,
        api_token=TOKEN,
        reward_url="http://127.0.0.1:9",
        **kw,
    )


def push(url: str, version: int, path: str, **kw: object) -> httpx.Response:
    body = {"version": version, "path": path, **kw}
    return httpx.post(f"{url}/v1/weights", json=body, headers=AUTH, timeout=60)


def error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    return ErrorBody.model_validate(resp.json()).error


def ready(url: str) -> int:
    """The version served, after checking the replica is ready (/readyz 200)."""
    resp = httpx.get(f"{url}/readyz", timeout=10)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["version"])


def tokens(url: str) -> list[int]:
    resp = httpx.post(f"{url}/v1/generate", json=GREEDY, timeout=60)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["outputs"][0][0]["token_ids"])


def policy(model_dir: Path, out: Path, *, seed: int, dtype: torch.dtype | None = None) -> Path:
    """``out/model.safetensors``: random weights for the architecture, in ``dtype``."""
    save_weights(model_dir, out, seed=seed)
    if dtype is not None:
        file = out / "model.safetensors"
        save_file({k: v.to(dtype) for k, v in load_file(file).items()}, file)
    return out


def slow_policy(model_dir: Path, out: Path, *, seed: int) -> Path:
    """A float32 policy of ``SLOW_COPIES`` identical shards: slow to read, loads fine."""
    policy(model_dir, out, seed=seed)
    shard = out / "model.safetensors"
    for i in range(SLOW_COPIES):
        shutil.copyfile(shard, out / f"shard-{i:04d}.safetensors")
    return out


def wait_loading(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "never saw the replica loading"
        time.sleep(0.005)


def test_two_concurrent_pushes_never_roll_the_replica_back(model_dir: Path, tmp_path: Path) -> None:
    """v10 (float32, slow to read) then, while it reads, v11 (float16, fast): both answer 200
    and the replica ends on v11. Before the fix v11 was swapped in first and v10 after it."""
    root = tmp_path / "ckpt"
    slow_policy(model_dir, root / "policy-v10", seed=10)
    policy(model_dir, root / "policy-v11", seed=11, dtype=torch.float16)
    with serve_app(create_app(settings(model_dir, root))) as url:
        answers: dict[int, httpx.Response] = {}
        first = threading.Thread(
            target=lambda: answers.__setitem__(10, push(url, 10, "policy-v10"))
        )
        first.start()
        wait_loading(url)
        answers[11] = push(url, 11, "policy-v11")
        first.join()
        assert answers[10].status_code == 200 and answers[11].status_code == 200
        assert ready(url) == 11
        assert error(push(url, 10, "policy-v10"), 409) == "stale_version"


def test_an_http_push_racing_a_queue_announcement_never_rolls_back(
    model_dir: Path, tmp_path: Path, private_redis: RedisProcess
) -> None:
    """The same race between an announcement taken by the replica's own queue worker (v10,
    slow to read) and an HTTP push (v11) that arrives while it reads: the replica, and its
    heartbeat, end on v11 (before the fix the worker swapped v10 in after v11)."""
    root = tmp_path / "ckpt"
    slow = slow_policy(model_dir, root / "policy-v10", seed=10)
    policy(model_dir, root / "policy-v11", seed=11)
    digests = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in slow.glob("*.safetensors")
    }
    announcement = WeightsAnnouncement(version=10, path=str(slow), sha256=digests)
    engine = TorchEngine(model_dir)
    app = create_app(settings(model_dir, root, redis_url=private_redis.url), engine=engine)

    async def announce() -> None:
        queue = make_queue(private_redis.url)
        try:
            await queue.publish_weights(announcement)
        finally:
            await queue.close()

    async def heartbeat() -> tuple[str, int | None]:
        queue = make_queue(private_redis.url)
        try:
            beat = (await queue.list_replicas())[0]
            return beat.state, beat.loaded_version
        finally:
            await queue.close()

    with serve_app(app) as url:
        asyncio.run(announce())
        wait_loading(url)
        assert push(url, 11, "policy-v11").status_code == 200
        deadline = time.monotonic() + 30
        while asyncio.run(heartbeat()) != ("ready", 11):
            assert time.monotonic() < deadline, asyncio.run(heartbeat())
            time.sleep(0.1)
        time.sleep(0.5)  # a late swap of v10 would land now
        assert ready(url) == 11 and engine.version == 11
        assert asyncio.run(heartbeat()) == ("ready", 11)


def test_a_fifo_shard_is_refused_at_once_and_changes_nothing(
    model_dir: Path, tmp_path: Path
) -> None:
    """``mkfifo ROOT/fifo/model.safetensors``: 415 at once (it used to block the load
    forever, the replica stuck "loading"), the replica stays ready, a later push loads."""
    root = tmp_path / "ckpt"
    (root / "fifo").mkdir(parents=True)
    fifo = root / "fifo" / "model.safetensors"
    os.mkfifo(fifo)
    os.mkfifo(root / "bare.safetensors")  # the path itself names a FIFO
    policy(model_dir, root / "policy-v2", seed=2)
    with serve_app(create_app(settings(model_dir, root))) as url:
        try:
            for path in ("fifo", "bare.safetensors"):
                resp = httpx.post(
                    f"{url}/v1/weights", json={"version": 1, "path": path}, headers=AUTH, timeout=10
                )
                assert error(resp, 415) == "unsupported_weights_format"
                assert ready(url) == 0
        finally:  # before the fix the open blocked until a writer came: let it go
            for f in (fifo, root / "bare.safetensors"):
                with contextlib.suppress(OSError):
                    os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        assert push(url, 2, "policy-v2").status_code == 200
        assert ready(url) == 2


def test_a_refused_push_leaves_the_replica_ready(model_dir: Path, tmp_path: Path) -> None:
    """Every refusal (403 outside the root, 404, 415 pickle, 409 digest, 400 bad shapes, 409
    stale) leaves /readyz 200 on the version served and the outputs unchanged."""
    root = tmp_path / "ckpt"
    policy(model_dir, root / "policy-v3", seed=3)
    (root / "pickled").mkdir()
    (root / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    (root / "shapes").mkdir()
    save_file({"not.a.weight": torch.zeros(2)}, root / "shapes" / "model.safetensors")
    with serve_app(create_app(settings(model_dir, root))) as url:
        assert push(url, 3, "policy-v3").status_code == 200
        before = tokens(url)
        refused = [
            (push(url, 99, "../../etc"), 403),
            (push(url, 99, "/etc"), 403),
            (push(url, 99, "policy-v404"), 404),
            (push(url, 99, "pickled/pytorch_model.bin"), 415),
            (push(url, 99, "policy-v3", sha256={"model.safetensors": "0" * 64}), 409),
            (push(url, 99, "shapes"), 400),
            (push(url, 2, "policy-v3"), 409),
        ]
        for resp, status in refused:
            error(resp, status)
            assert ready(url) == 3, resp.text
        assert tokens(url) == before


def test_versions_are_bounded_and_the_served_version_is_not_replaced(
    model_dir: Path, tmp_path: Path
) -> None:
    """A version past 2**53 - 1 is a 422 (it used to be taken, and every later push was then
    stale); re-pushing the version served is a no-op with the same bytes and a 409
    ``version_conflict`` with others, so ``policy_version`` names one set of weights."""
    root = tmp_path / "ckpt"
    policy(model_dir, root / "policy-v1", seed=1)
    policy(model_dir, root / "other", seed=7)
    with serve_app(create_app(settings(model_dir, root))) as url:
        for huge in (2**53, 1180591620717411303424):
            assert error(push(url, huge, "policy-v1"), 422) == "validation_error"
        assert push(url, 1, "policy-v1").status_code == 200
        served = tokens(url)
        assert error(push(url, 1, "other"), 409) == "version_conflict"
        assert push(url, 1, "policy-v1").status_code == 200  # byte-identical: accepted
        assert ready(url) == 1 and tokens(url) == served
        assert error(push(url, 0, "other"), 409) == "stale_version"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_weights_are_refused(model_dir: Path, tmp_path: Path, bad: float) -> None:
    """One non-finite value anywhere: 400 ``non_finite_weights``, nothing loaded."""
    root = tmp_path / "ckpt"
    path = policy(model_dir, root / "policy-v1", seed=1, dtype=torch.bfloat16)
    tensors = load_file(path / "model.safetensors")
    name = sorted(tensors)[-1]
    tensors[name].view(-1)[3] = bad
    save_file(tensors, path / "model.safetensors")
    with serve_app(create_app(settings(model_dir, root))) as url:
        before = tokens(url)
        assert error(push(url, 1, "policy-v1"), 400) == "non_finite_weights"
        assert ready(url) == 0 and tokens(url) == before


@pytest.mark.parametrize("route", ["/v1/generate", "/v1/value"])
def test_temperature_above_what_every_engine_accepts_is_a_422(
    model_dir: Path, tmp_path: Path, route: str
) -> None:
    """vLLM refuses temperatures above 2 (they were 500s); the schema now stops there for
    every engine, and 2 itself is served."""
    body: dict[str, object] = (
        {"prompts": ["Question: 1+1=?\n"]}
        if route == "/v1/generate"
        else {"items": [{"prompt": "Question: 1+1=?\n", "gold": "2"}], "k": 1}
    )
    with serve_app(create_app(settings(model_dir, tmp_path))) as url:
        for temperature in (2.5, 5.0):
            sampling = {"temperature": temperature, "max_tokens": 2}
            resp = httpx.post(f"{url}{route}", json={**body, "sampling": sampling}, timeout=60)
            assert error(resp, 422) == "validation_error"
        if route == "/v1/generate":
            ok = {**body, "sampling": {"temperature": 2.0, "max_tokens": 2}}
            assert httpx.post(f"{url}{route}", json=ok, timeout=60).status_code == 200


class SwapFailsEngine(TorchEngine):
    """A torch engine whose next load fails half-way (a fault injected here: the real
    engines check everything before copying, so their refusals never get this far)."""

    fail_next = True

    async def load_weights(self, version: int, path: object) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device lost during the copy (injected)")
        await super().load_weights(version, path)  # type: ignore[arg-type]


def test_an_engine_failing_mid_swap_is_unready_until_a_load_succeeds(
    model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ckpt"
    policy(model_dir, root / "policy-v1", seed=1)
    policy(model_dir, root / "policy-v2", seed=2)
    engine = SwapFailsEngine(model_dir)
    with serve_app(create_app(settings(model_dir, root), engine=engine)) as url:
        assert error(push(url, 1, "policy-v1"), 503) == "load_failed"
        resp = httpx.get(f"{url}/readyz")
        assert error(resp, 503) == "not_ready" and "device lost" in resp.json()["message"]
        assert httpx.get(f"{url}/healthz").status_code == 200  # alive: a push can fix it
        assert push(url, 2, "policy-v2").status_code == 200
        assert ready(url) == 2
