"""Drift test: every environment variable compose and the chart set is a Settings field of the
service the container runs, that field is read by the code the container's command runs (its
Settings class instantiated, the field read: tests/deploy/readers.py walks the source from the
CLI callback), and every setting a deployment must provide is set by both.

The fields come from the Settings classes at test time (model_fields + env_prefix), so new
fields need no change here; a renamed or removed field makes this fail naming the variable.
"""

from __future__ import annotations

from typing import Any

from services.trainer.settings import TrainerSettings
from tests.deploy.conftest import TOKEN
from tests.deploy.manifests import (
    Container,
    chart_containers,
    compose_containers,
    env_names,
    load_compose,
    render,
    required_fields,
    service_of,
    settings_classes,
    stray_variables,
    unread_variables,
    url_host_port,
)
from tests.deploy.readers import closure, settings_read

# Settings that have a default fit for a laptop but not for a container deployment: the host
# must be 0.0.0.0 to be reachable, the URLs must name the other containers, the checkpoint root
# must be the shared volume, the token must guard POST /v1/weights.
DEPLOY_REQUIRED = {
    "reward": {"host", "port"},
    "rollout": {"host", "port", "redis_url", "reward_url", "checkpoint_root", "api_token"},
    "trainer": {"redis_url", "reward_url", "rollout_url", "checkpoint_root", "api_token"},
}


def _by_service(containers: list[Container]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for c in containers:
        service = service_of(c.argv)
        if service and service != "*":
            out.setdefault(service, set()).update(v.upper() for v in c.env)
    return out


def test_settings_classes_found_with_prefixes() -> None:
    classes = settings_classes()
    assert {"reward", "rollout", "trainer"} <= set(classes)
    for service, cls in classes.items():
        prefix = f"VINEPPO_{service.upper()}_"
        assert cls.model_config.get("env_prefix") == prefix, f"{cls.__name__}: prefix"
        assert f"{prefix}PORT" in env_names(cls)


def test_compose_sets_only_settings_fields() -> None:
    problems = stray_variables(compose_containers(load_compose()), settings_classes())
    assert not problems, "docker-compose.yml drifted from the Settings:\n" + "\n".join(problems)


def test_chart_sets_only_settings_fields(rendered: list[dict[str, Any]]) -> None:
    problems = stray_variables(chart_containers(rendered), settings_classes())
    assert not problems, "the Helm chart drifted from the Settings:\n" + "\n".join(problems)


def test_required_settings_set_by_compose_and_chart(rendered: list[dict[str, Any]]) -> None:
    classes = settings_classes()
    sources = {
        "docker-compose.yml": _by_service(compose_containers(load_compose())),
        "helm chart": _by_service(chart_containers(rendered)),
    }
    problems = []
    for service, cls in classes.items():
        wanted = required_fields(cls) | DEPLOY_REQUIRED.get(service, set())
        missing_fields = wanted - set(cls.model_fields)
        assert not missing_fields, f"{cls.__name__} lost fields {sorted(missing_fields)}"
        names = {f: v for v, f in env_names(cls).items()}
        for source, env in sources.items():
            for field in sorted(wanted):
                if names[field] not in env.get(service, set()):
                    problems.append(f"{source}: {service} does not set {names[field]}")
    assert not problems, "\n".join(problems)


def test_stray_variable_is_reported_by_name() -> None:
    """The checker itself: a misspelt variable and a variable of another service are named."""
    containers = [
        Container("c1", ("vineppo", "serve", "rollout"), ("VINEPPO_ROLLOUT_MODLE_DIR",)),
        Container("c2", ("vineppo", "serve", "reward"), ("VINEPPO_ROLLOUT_REDIS_URL",)),
        Container("c3", ("redis-server",), ("VINEPPO_REWARD_PORT",)),
        Container("c4", ("vineppo", "serve", "reward"), ("VINEPPO_REWARD_PORT",)),
        Container("c5", ("redis-server",), ("REDISCLI_AUTH",)),  # redis's own: fine
    ]
    problems = stray_variables(containers, settings_classes())
    assert len(problems) == 3, problems
    assert "VINEPPO_ROLLOUT_MODLE_DIR" in problems[0] and problems[0].startswith("c1")
    assert "VINEPPO_ROLLOUT_REDIS_URL" in problems[1] and problems[1].startswith("c2")
    assert "VINEPPO_REWARD_PORT" in problems[2] and problems[2].startswith("c3")


def test_chart_extra_env_with_stray_name_is_caught(helm_bin: str) -> None:
    """A user-supplied extraEnv that names no field is caught on the real rendered chart."""
    docs = render(
        helm_bin,
        f"apiToken.value={TOKEN}",
        "rollout.extraEnv[0].name=VINEPPO_ROLLOUT_NOT_A_FIELD",
        "rollout.extraEnv[0].value=1",
    )
    problems = stray_variables(chart_containers(docs), settings_classes())
    assert len(problems) == 1 and "VINEPPO_ROLLOUT_NOT_A_FIELD" in problems[0], problems


def test_urls_point_at_the_right_service_and_port(rendered: list[dict[str, Any]]) -> None:
    """*_URL settings name a Service (chart) / a compose service, on that service's port."""
    compose = load_compose()
    ports = {
        name: str(svc.get("environment", {}).get(f"VINEPPO_{name.upper()}_PORT", ""))
        for name, svc in compose["services"].items()
    }
    redis_cmd = compose["services"]["redis"]["command"]
    ports["redis"] = redis_cmd[redis_cmd.index("--port") + 1]  # "${REDIS_PORT:-6379}"
    for name, svc in compose["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if var.endswith("_URL"):
                host, port = url_host_port(str(value))
                assert ports.get(host) == port, f"compose {name}: {var}={value}"
    services = {
        d["metadata"]["name"]: {str(p["port"]) for p in d["spec"]["ports"]}
        for d in rendered
        if d["kind"] == "Service"
    }
    for doc in rendered:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        for cont in doc["spec"]["template"]["spec"]["containers"]:
            for e in cont.get("env", []):
                if e["name"].endswith("_URL") and "value" in e:
                    host, port = url_host_port(e["value"])
                    assert port in services.get(host, set()), f"{doc['metadata']['name']}: {e}"


def test_compose_variables_are_read_by_the_command_that_runs() -> None:
    problems = unread_variables(compose_containers(load_compose()))
    assert not problems, "docker-compose.yml sets dead variables:\n" + "\n".join(problems)


def test_chart_variables_are_read_by_the_command_that_runs(rendered: list[dict[str, Any]]) -> None:
    problems = unread_variables(chart_containers(rendered))
    assert not problems, "the Helm chart sets dead variables:\n" + "\n".join(problems)


def _defines_but_never_builds() -> type:
    return TrainerSettings  # named, never called: what `vineppo train` did before issue 18


def test_reader_check_catches_a_settings_class_that_is_never_built() -> None:
    """The checker itself: a class only named is not instantiated, and calling it is."""
    classes, attrs = closure(_defines_but_never_builds)
    assert TrainerSettings not in classes
    built, attrs = settings_read(("vineppo", "train"))
    assert TrainerSettings in built and {"rollout_url", "checkpoint_root"} <= attrs
