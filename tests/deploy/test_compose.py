"""docker-compose.yml: valid against the Compose specification's JSON schema (the copy that
check-jsonschema vendors, Apache-2.0, from github.com/compose-spec/compose-spec), and shaped
the way the deploy issue asks: GPU reservations, healthchecks gating depends_on, fail-fast
required variables, a GPU-free `cpu` profile."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.manifests import COMPOSE, ROOT, load_compose

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
REQUIRED_VARS = {"MODEL_DIR", "RUN_CONFIG", "API_TOKEN", "REDIS_PASSWORD"}
GPU_SERVICES = {"rollout", "trainer"}


def _compose_schema() -> dict[str, Any]:
    ref = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(ref.read_text())
    return schema


def _validate(doc: dict[str, Any]) -> list[str]:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?message} (enough for this file)."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name, "")
        if op in (":?", "?") and not value:
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        return value or (arg if op in (":-", "-") else "")

    return VAR.sub(sub, text)


def _env_file(path: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def test_compose_validates_against_the_compose_spec() -> None:
    errors = _validate(load_compose())
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("env_file", ["deploy/compose/cpu.env", "deploy/compose/gpu.env.example"])
def test_compose_valid_after_interpolation(env_file: str) -> None:
    doc = yaml.safe_load(_interpolate(COMPOSE.read_text(), _env_file(env_file)))
    assert not _validate(doc)
    assert "${" not in json.dumps(doc)


def test_schema_catches_a_bad_compose_file() -> None:
    doc = copy.deepcopy(load_compose())
    doc["services"]["rollout"]["healthcheck"]["retires"] = 3  # misspelt
    doc["services"]["reward"]["depends_on"] = {"redis": {"condition": "service_ready"}}
    errors = _validate(doc)
    assert any("retires" in e for e in errors), errors
    assert any("service_ready" in e for e in errors), errors


def test_required_variables_fail_fast() -> None:
    text = COMPOSE.read_text()
    found = {m.group(1): m.group(2) for m in VAR.finditer(text)}
    required = {name for name, op in found.items() if op == ":?"}
    assert required == REQUIRED_VARS
    bare = [name for name, op in found.items() if op is None]
    assert not bare, f"${{VAR}} without a default or :? message: {bare}"
    env = _env_file("deploy/compose/gpu.env.example")
    for name in REQUIRED_VARS:
        with pytest.raises(ValueError, match=name):
            _interpolate(text, {k: v for k, v in env.items() if k != name})
    assert set(_env_file("deploy/compose/cpu.env")) >= REQUIRED_VARS


def test_redis_append_only_on_a_volume() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose["volumes"]


def _gpus(svc: dict[str, Any]) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = (
        svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    return [d for d in devices if "gpu" in d.get("capabilities", [])]


def test_gpu_reservations_only_for_rollout_and_trainer() -> None:
    for name, svc in load_compose()["services"].items():
        gpus = _gpus(svc)
        if name in GPU_SERVICES:
            assert gpus and gpus[0]["driver"] == "nvidia" and gpus[0]["count"] >= 1, name
        else:
            assert not gpus, f"{name} reserves a GPU"


def test_checkpoint_and_model_volumes_shared() -> None:
    compose = load_compose()
    for name in GPU_SERVICES:
        vols = compose["services"][name]["volumes"]
        assert "checkpoints:/checkpoints" in vols, name
        assert any(v.endswith(":/models:ro") for v in vols), name
    assert "checkpoints" in compose["volumes"]
    cmd = compose["services"]["rollout"]["command"]
    assert cmd[cmd.index("--model") + 1].startswith("/models/")


def test_healthchecks_gate_depends_on() -> None:
    services = load_compose()["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"
            check = services[dep].get("healthcheck", {})
            assert check.get("test") and not check.get("disable"), f"{dep} has no healthcheck"
    for name in ("reward", "rollout"):
        test = services[name]["healthcheck"]["test"]
        assert test == ["CMD", "python", "/opt/vineppo/healthcheck.py"], name
    assert set(services["trainer"]["depends_on"]) == {"redis", "reward", "rollout"}
    assert set(services["rollout"]["depends_on"]) == {"redis", "reward"}


def test_cpu_profile_runs_the_demo_without_gpu() -> None:
    services = load_compose()["services"]
    in_cpu = {name for name, svc in services.items() if "cpu" in svc.get("profiles", [])}
    assert in_cpu == {"demo"}
    demo = services["demo"]
    assert demo["command"] == ["vineppo", "demo"]
    assert not _gpus(demo) and not demo.get("depends_on")
    assert "Dockerfile.cpu" in demo["build"]["dockerfile"]
    for name in GPU_SERVICES:
        assert "Dockerfile.cuda" in services[name]["build"]["dockerfile"], name
