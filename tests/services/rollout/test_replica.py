"""One replica entry point: ``vineppo serve rollout`` (HTTP API + queue worker) and
``vineppo serve rollout --worker-only`` take every ``RolloutSettings`` field to where it
belongs (engine, reward client, queue, worker, HTTP API), against a real redis-server with a
password, a real reward service that requires a token, real uvicorn and real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.reward.app import create_app as create_reward_app
from services.reward.settings import RewardSettings
from services.rollout.settings import RolloutSettings
from services.trainer.client.jobs import wait_for_replicas
from shared.queue import make_queue
from shared.schemas import Job, SamplingParams, ValueItem, ValueRequest
from tests.services.rollout.conftest import PROMPT
from tests.shared.queue.test_redis_auth import PASSWORD, redis_server
from tests.support import free_port, serve_app

pytestmark = [pytest.mark.server, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[3]
REWARD_TOKEN = "reward-token-for-tests-0123"


@pytest.fixture(scope="module")
def locked() -> Iterator[int]:
    """A redis-server that requires ``PASSWORD``; yields its port."""
    with redis_server("--requirepass", PASSWORD) as port:
        yield port


@pytest.fixture(scope="module")
def token_reward_url() -> Iterator[str]:
    """The real reward service, requiring the bearer token on /v1/grade."""
    settings = RewardSettings(workers=1, api_token=REWARD_TOKEN, require_token=True)
    with serve_app(create_reward_app(settings)) as url:
        yield url


# ---- every field arrives, in both modes ----------------------------------------------------

Seen = dict[str, Any]
Check = Callable[[Seen], object]

# field -> (value given, where it must arrive, "both" or "http"); the value is given as a CLI
# flag where one exists (flag names below), else as VINEPPO_ROLLOUT_<FIELD>
FIELDS: dict[str, tuple[str, Check, str]] = {
    "host": ("127.0.0.2", lambda s: s["settings"].host, "http"),
    "port": ("8123", lambda s: s["settings"].port, "http"),
    "log_level": ("warning", lambda s: s["log_level"], "both"),
    "max_body_bytes": ("4096", lambda s: s["settings"].max_body_bytes, "http"),
    "redis_url": ("", lambda s: s["queue"][0], "both"),  # the value is set per test
    "redis_password": (PASSWORD, lambda s: s["queue"][0], "both"),
    "checkpoint_root": ("", lambda s: s["config"].checkpoint_root, "both"),
    "api_token": ("api-token-for-tests-0123", lambda s: s["settings"].api_token, "http"),
    "require_token": ("true", lambda s: s["settings"].require_token, "http"),
    "reward_url": ("http://127.0.0.1:9", lambda s: s["reward"]["base_url"], "both"),
    "model_dir": ("", lambda s: s["engine"][1], "both"),
    "engine": ("torch", lambda s: s["engine"][0], "both"),
    "kv_cache_gib": ("0.5", lambda s: s["engine"][2]["kv_cache_gib"], "both"),
    "enforce_eager": ("true", lambda s: s["engine"][2]["enforce_eager"], "both"),
    "gpu_memory_utilization": ("0.5", lambda s: s["engine"][2]["gpu_memory_utilization"], "both"),
    "device": ("cpu", lambda s: s["engine"][2]["device"], "both"),
    "dtype": ("bfloat16", lambda s: s["engine"][2]["dtype"], "both"),
    "max_batch": ("3", lambda s: s["engine"][2]["max_batch"], "both"),
    "min_k": ("2", lambda s: s["settings"].min_k, "http"),
    "max_k": ("100", lambda s: s["settings"].max_k, "http"),
    "max_items": ("50", lambda s: s["settings"].max_items, "http"),
    "max_weights_bytes": ("12345", lambda s: s["config"].max_weights_bytes, "both"),
    "grade_timeout_s": ("7.5", lambda s: s["reward"]["timeout_s"], "both"),
    "reward_api_token": (REWARD_TOKEN, lambda s: s["reward"]["token"], "both"),
    "replica_id": ("replica-under-test", lambda s: s["config"].replica_id, "both"),
    "queue_prefix": ("vineppo-replica-test:", lambda s: s["queue"][1], "both"),
    "fetch_batch": ("2", lambda s: s["config"].batch, "both"),
    "heartbeat_s": ("0.5", lambda s: s["config"].heartbeat_s, "both"),
    "heartbeat_ttl_s": ("3.0", lambda s: s["config"].heartbeat_ttl_s, "both"),
    "claim_idle_ms": ("4321", lambda s: s["config"].claim_idle_ms, "both"),
    "value_cache_entries": ("123", lambda s: s["config"].value_cache_entries, "both"),
}
FLAGS = {"model_dir": "--model", "engine": "--engine", "device": "--device", "dtype": "--dtype",
         "host": "--host", "port": "--port", "reward_url": "--reward-url",
         "redis_url": "--redis-url"}  # fmt: skip


def test_the_table_names_every_setting() -> None:
    """A new RolloutSettings field must say where it arrives (and is then checked below)."""
    assert set(FIELDS) == set(RolloutSettings.model_fields)


def _expected(field: str, values: dict[str, str]) -> object:
    """What ``field`` holds in settings built straight from ``values`` (typed; secrets
    revealed; the password merged into the Redis URL)."""
    settings = RolloutSettings(**values)  # type: ignore[arg-type]
    got = getattr(settings, "redis_url" if field == "redis_password" else field)
    return got.get_secret_value() if hasattr(got, "get_secret_value") else got


@pytest.mark.parametrize("mode", ["worker-only", "http"])
def test_every_setting_reaches_engine_grader_queue_and_worker(
    mode: str, locked: int, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vineppo serve rollout [--worker-only]`` with every field set (flags where there are
    some, VINEPPO_ROLLOUT_* otherwise): each reaches make_engine, the RewardClient, the queue,
    the worker's config or (HTTP mode) the app's settings."""
    import services.reward.client as reward_client_mod
    import services.rollout.engine as engine_mod
    import services.rollout.worker as worker_mod
    import shared.logs as logs_mod
    import shared.queue as queue_mod
    import shared.serve as serve_mod
    from shared.serve import serve_in_thread

    url = f"redis://127.0.0.1:{locked}/0"
    values = {f: v for f, (v, _, _) in FIELDS.items()}
    values.update(
        redis_url=url, checkpoint_root=str(tmp_path / "ckpt"), model_dir=str(tiny_model_dir)
    )
    seen: Seen = {}

    real_make_engine = engine_mod.make_engine

    def make_engine(kind: str, model_dir: Any, **kw: Any) -> Any:
        seen["engine"] = (kind, Path(model_dir), kw)
        return real_make_engine(kind, model_dir, **kw)

    real_init = reward_client_mod.RewardClient.__init__

    def client_init(self: Any, base_url: str, **kw: Any) -> None:
        seen["reward"] = {
            "base_url": base_url,
            "timeout_s": kw.get("timeout_s"),
            "token": kw.get("token"),
        }
        real_init(self, base_url, **kw)

    real_make_queue = queue_mod.make_queue

    def make_queue_spy(redis_url: str | None, prefix: str = "vineppo:") -> Any:
        seen["queue"] = (redis_url, prefix)
        return real_make_queue(redis_url, prefix=prefix)

    async def worker_run(self: Any, stop: Any = None) -> None:
        seen["config"] = self.config  # the worker was started: stop at once

    def setup_logging(level: str | int = "info") -> None:
        seen["log_level"] = level

    def run(api: Any, settings: RolloutSettings) -> None:  # real uvicorn, until the boot ends
        seen["settings"] = settings
        seen["log_level"] = settings.log_level
        with serve_in_thread(api, timeout=120):
            pass

    monkeypatch.setattr(engine_mod, "make_engine", make_engine)
    monkeypatch.setattr("services.rollout.app.make_engine", make_engine, raising=False)
    monkeypatch.setattr(reward_client_mod.RewardClient, "__init__", client_init)
    monkeypatch.setattr(queue_mod, "make_queue", make_queue_spy)
    monkeypatch.setattr(worker_mod.RolloutWorker, "run", worker_run)
    monkeypatch.setattr(logs_mod, "setup_logging", setup_logging)
    monkeypatch.setattr(serve_mod, "run", run)
    for name in list(os.environ):
        if name.startswith("VINEPPO_ROLLOUT_"):
            monkeypatch.delenv(name)
    args = ["serve", "rollout", *(["--worker-only"] if mode == "worker-only" else [])]
    for field, value in values.items():
        if field in FLAGS:
            args += [FLAGS[field], value]
        else:
            monkeypatch.setenv(f"VINEPPO_ROLLOUT_{field.upper()}", value)

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    wrong = {}
    for field, (_, where, modes) in FIELDS.items():
        if modes == "http" and mode != "http":
            continue
        want = _expected(field, values)
        try:
            got = where(seen)
        except (KeyError, TypeError) as exc:
            wrong[field] = f"never arrived ({exc!r})"
            continue
        got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
        if got != want:
            wrong[field] = f"{got!r} != {want!r}"
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())


# ---- real processes --------------------------------------------------------------------------


@contextlib.contextmanager
def replica_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[Any]:
    cmd = [sys.executable, "-m", "services.cli", "serve", "rollout", *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=out)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _one_value_job(url: str, prefix: str, proc: Any, log: Path) -> Any:
    queue = make_queue(url, prefix=prefix)
    try:
        deadline = time.monotonic() + 180
        while not await queue.list_replicas():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no replica registered: {log.read_text()[-3000:]}"
            await asyncio.sleep(0.2)
        await wait_for_replicas(queue, 0, 1, timeout=120)
        # the coin model stops within 16 tokens with probability 1 - 2^-16: graded, not cut
        item = ValueItem(prompt=PROMPT, partial_response="Tom starts with 3", gold="7")
        sampling = SamplingParams(temperature=1.0, max_tokens=16, seed=0)
        job = Job(
            kind="value", policy_version=0, value=ValueRequest(items=[item], k=2, sampling=sampling)
        )
        await queue.submit(job)
        while time.monotonic() < deadline:
            got = await queue.get_results([job.job_id])
            if got:
                return got[job.job_id]
            assert proc.poll() is None, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
        raise AssertionError(f"the value job was not answered: {log.read_text()[-3000:]}")
    finally:
        await queue.close()


@pytest.mark.parametrize(
    ("mode", "password_in"),
    [("worker-only", "variable"), ("worker-only", "url"), ("http", "variable")],
)
def test_replica_process_uses_redis_url_flag_password_variable_and_reward_token(
    mode: str,
    password_in: str,
    locked: int,
    coin_model_dir: Path,
    token_reward_url: str,
    tmp_path: Path,
) -> None:
    """A real ``vineppo serve rollout`` process given ``--redis-url`` (the password in it, or
    in VINEPPO_ROLLOUT_REDIS_PASSWORD) and the reward token in
    VINEPPO_ROLLOUT_REWARD_API_TOKEN registers as a replica (HTTP mode too) and answers a value
    job whose continuations the token-requiring reward service graded."""
    prefix = "vineppo:"  # the default: `vineppo serve rollout` had no way to change it
    authed = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{locked}/0"
    url = authed if password_in == "url" else f"redis://127.0.0.1:{locked}/0"
    args = [
        "--model",
        str(coin_model_dir),
        "--engine",
        "torch",
        "--redis-url",
        url,
        "--reward-url",
        token_reward_url,
    ]
    args += ["--worker-only"] if mode == "worker-only" else ["--port", str(free_port())]
    env = {
        "VINEPPO_ROLLOUT_REWARD_API_TOKEN": REWARD_TOKEN,
        "VINEPPO_ROLLOUT_CHECKPOINT_ROOT": str(tmp_path),
    }
    if password_in == "variable":
        env["VINEPPO_ROLLOUT_REDIS_PASSWORD"] = PASSWORD
    log = tmp_path / "replica.log"
    with replica_process(args, env, log) as proc:
        result = asyncio.run(_one_value_job(authed, prefix, proc, log))
    assert result.ok, (result.error, log.read_text()[-3000:])
    assert result.value is not None and len(result.value.values[0].returns) == 2
    assert "truncated" not in result.value.values[0].verdicts  # the reward service graded
