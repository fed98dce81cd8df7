"""The chart's security wiring, from `helm template` (no cluster): the Redis password Secret and
who reads it, TLS for Redis, bearer auth on the rollout API, NetworkPolicies. The Redis parts
are also run for real: redis-server with the StatefulSet's args and the queue client with the
rollout's env, after the `$(VAR)` expansion Kubernetes would do."""

from __future__ import annotations

import base64
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from services.rollout.settings import RolloutSettings
from shared.queue import make_queue
from shared.queue.redis_streams import RedisAuthError
from tests.deploy.conftest import TOKEN
from tests.deploy.manifests import CHART, WORKLOAD_KINDS, by_kind, find, helm, pod_spec, render
from tests.shared.queue.test_redis_auth import make_tls_files, redis_server

TLS = ["redis.tls.enabled=true", "redis.tls.existingSecret=redis-tls"]
CLIENTS = {"rollout": "VINEPPO_ROLLOUT_", "trainer": "VINEPPO_TRAINER_"}


def container(doc: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = pod_spec(doc)["containers"][0]
    return c


def workload(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    kind = {"redis": "StatefulSet", "trainer": "Job"}.get(component, "Deployment")
    return find(docs, kind, f"-{component}")


def env_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(doc).get("env", [])}


def expand(env: dict[str, dict[str, Any]], secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: secretKeyRef values looked up in
    ``secrets`` ({name/key: value}), then $(VAR) replaced by variables defined earlier."""
    out: dict[str, str] = {}
    for name, e in env.items():
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            out[name] = secrets[f"{ref['name']}/{ref['key']}"]
        else:
            out[name] = re.sub(r"\$\((\w+)\)", lambda m: out[m.group(1)], str(e["value"]))
    return out


def secret_values(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {
        f"{d['metadata']['name']}/{k}": base64.b64decode(v).decode()
        for d in by_kind(docs, "Secret")
        for k, v in d["data"].items()
    }


# ---- Redis password -------------------------------------------------------------------------


def test_redis_password_secret_generated_and_read_by_redis_and_clients(
    rendered: list[dict[str, Any]],
) -> None:
    secret = find(rendered, "Secret", "-redis-auth")
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    ref = {"name": secret["metadata"]["name"], "key": "redis-password"}
    redis = container(workload(rendered, "redis"))
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDISCLI_AUTH)"
    assert redis["env"] == [{"name": "REDISCLI_AUTH", "valueFrom": {"secretKeyRef": ref}}]
    assert "PONG" in " ".join(redis["readinessProbe"]["exec"]["command"])
    for component, prefix in CLIENTS.items():
        env = env_of(workload(rendered, component))
        assert env[f"{prefix}REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
        names = list(env)  # $(VAR) expands only variables defined earlier
        assert names.index(f"{prefix}REDIS_PASSWORD") < names.index(f"{prefix}REDIS_URL")
        url = expand(env, secret_values(rendered))[f"{prefix}REDIS_URL"]
        assert url == f"redis://:{password}@t-vineppo-redis:6379/0", component


def test_existing_secret_is_referenced_not_created(helm_bin: str) -> None:
    docs = render(helm_bin, f"apiToken.value={TOKEN}", "redis.auth.existingSecret=my-redis")
    assert not [d for d in by_kind(docs, "Secret") if "redis" in d["metadata"]["name"]]
    for component in ("redis", *CLIENTS):
        env = env_of(workload(docs, component)).values()
        refs = [e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e]
        refs = [r for r in refs if r["key"] == "redis-password"]
        assert refs == [{"name": "my-redis", "key": "redis-password"}], component


@pytest.mark.parametrize("bad", ["short-pw", "has@at-sign-1234567", "with space 123456789"])
def test_unsafe_redis_password_is_refused_at_render(helm_bin: str, bad: str) -> None:
    proc = helm(
        helm_bin,
        "template",
        "t",
        str(CHART),
        "--set",
        f"apiToken.value={TOKEN}",
        "--set-string",
        f"redis.auth.password={bad}",
    )
    assert proc.returncode != 0 and "redis.auth.password" in proc.stderr, proc.stderr


def test_external_url_with_credentials_is_refused(helm_bin: str) -> None:
    proc = helm(
        helm_bin,
        "template",
        "t",
        str(CHART),
        "--set",
        f"apiToken.value={TOKEN}",
        "--set",
        "redis.enabled=false",
        "--set",
        "redis.externalUrl=redis://:pw@r.example:6379/0",
    )
    assert proc.returncode != 0 and "redis.externalUrl" in proc.stderr, proc.stderr


def test_auth_off_leaves_no_password_anywhere(helm_bin: str) -> None:
    docs = render(helm_bin, f"apiToken.value={TOKEN}", "redis.auth.enabled=false")
    assert "--requirepass" not in container(workload(docs, "redis"))["args"]
    for component, prefix in CLIENTS.items():
        env = env_of(workload(docs, component))
        assert f"{prefix}REDIS_PASSWORD" not in env
        assert env[f"{prefix}REDIS_URL"]["value"] == "redis://t-vineppo-redis:6379/0"


def _run_chart_redis(
    docs: list[dict[str, Any]],
    secrets: dict[str, str],
    tmp: Path,
    files: dict[str, Path] | None = None,
) -> AbstractContextManager[int]:
    """redis_server(...) with the StatefulSet's args, as the pod would run them (paths moved
    to ``tmp``, the TLS port to a free one)."""
    redis = container(workload(docs, "redis"))
    env = expand({e["name"]: e for e in redis.get("env", [])}, secrets)
    tls_paths = {"/tls/tls.crt": "crt", "/tls/tls.key": "key", "/tls/ca.crt": "ca"}
    args = []
    for prev, arg in zip(["", *redis["args"]], redis["args"], strict=False):
        if arg == "/data":
            arg = str(tmp)
        elif arg in tls_paths and files is not None:
            arg = str(files[tls_paths[arg]])
        elif prev == "--tls-port":
            arg = "{port}"
        args.append(re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg))
    return redis_server(*args)


def _client_url(
    docs: list[dict[str, Any]], secrets: dict[str, str], port: int, ca: Path | None = None
) -> str:
    env = expand(env_of(workload(docs, "rollout")), secrets)
    with pytest.MonkeyPatch.context() as mp:  # the rollout's own settings read its env
        for k, v in env.items():
            if k.startswith("VINEPPO_ROLLOUT_REDIS_"):
                v = v.replace("t-vineppo-redis:6379", f"127.0.0.1:{port}")
                mp.setenv(k, v.replace("/etc/redis-tls/ca.crt", str(ca)) if ca else v)
        url = RolloutSettings().redis_url
    assert url is not None
    return url


@pytest.mark.redis
async def test_chart_redis_and_rollout_env_work_together(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    secrets = secret_values(rendered)
    with _run_chart_redis(rendered, secrets, tmp_path) as port:
        queue = make_queue(_client_url(rendered, secrets, port))
        assert await queue.depth() == 0
        await queue.close()
        with pytest.raises(RedisAuthError):  # the password is really required
            make_queue(f"redis://127.0.0.1:{port}/0")


# ---- TLS ------------------------------------------------------------------------------------


def test_tls_needs_its_secret(helm_bin: str) -> None:
    proc = helm(
        helm_bin,
        "template",
        "t",
        str(CHART),
        "--set",
        f"apiToken.value={TOKEN}",
        "--set",
        "redis.tls.enabled=true",
    )
    assert proc.returncode != 0 and "redis.tls.existingSecret" in proc.stderr, proc.stderr


def test_tls_wiring(helm_bin: str) -> None:
    docs = render(helm_bin, f"apiToken.value={TOKEN}", *TLS)
    sts = workload(docs, "redis")
    args = container(sts)["args"]
    assert args[args.index("--port") + 1] == "0" and args[args.index("--tls-port") + 1] == "6379"
    assert "--tls" in " ".join(container(sts)["readinessProbe"]["exec"]["command"])
    vols = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "redis-tls"
    for component, prefix in CLIENTS.items():
        doc = workload(docs, component)
        url = env_of(doc)[f"{prefix}REDIS_URL"]["value"]
        assert url.startswith("rediss://") and url.endswith("?ssl_ca_certs=/etc/redis-tls/ca.crt")
        ca = {v["name"]: v for v in pod_spec(doc)["volumes"]}["redis-tls-ca"]["secret"]
        assert ca == {"secretName": "redis-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        mount = [m for m in container(doc)["volumeMounts"] if m["name"] == "redis-tls-ca"]
        assert mount == [{"name": "redis-tls-ca", "mountPath": "/etc/redis-tls", "readOnly": True}]


@pytest.mark.redis
async def test_chart_tls_redis_and_rollout_env_work_together(helm_bin: str, tmp_path: Path) -> None:
    docs = render(
        helm_bin, f"apiToken.value={TOKEN}", *TLS, "redis.auth.password=tls-pw-0123456789"
    )
    files = make_tls_files(tmp_path)
    secrets = secret_values(docs)
    with _run_chart_redis(docs, secrets, tmp_path, files) as port:
        queue = make_queue(_client_url(docs, secrets, port, ca=files["ca"]))
        assert await queue.depth() == 0
        await queue.close()
        with pytest.raises(RedisAuthError, match="certificate"):  # the CA is really checked
            make_queue(_client_url(docs, secrets, port, ca=files["other_ca"]))


# ---- bearer auth ----------------------------------------------------------------------------


def test_rollout_requires_the_token_by_default(rendered: list[dict[str, Any]]) -> None:
    env = env_of(workload(rendered, "rollout"))
    assert env["VINEPPO_ROLLOUT_REQUIRE_TOKEN"]["value"] == "true"
    assert env["VINEPPO_ROLLOUT_API_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "api-token"
    full = expand(env, secret_values(rendered))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in full.items():
            mp.setenv(k, v)
        settings = RolloutSettings()
    assert settings.require_token is True and settings.api_token is not None


def test_rollout_token_requirement_can_be_turned_off(helm_bin: str) -> None:
    docs = render(helm_bin, f"apiToken.value={TOKEN}", "rollout.requireToken=false")
    assert env_of(workload(docs, "rollout"))["VINEPPO_ROLLOUT_REQUIRE_TOKEN"]["value"] == "false"


# ---- NetworkPolicies ------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) applied to ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        has, value = e["key"] in labels, labels.get(e["key"])
        ok = {
            "In": has and value in e.get("values", []),
            "NotIn": not has or value not in e.get("values", []),
            "Exists": has,
            "DoesNotExist": not has,
        }[e["operator"]]
        if not ok:
            return False
    return True


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """{component: pod labels} of every workload the chart renders."""
    return {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"][
            "template"
        ]["metadata"]["labels"]
        for d in docs
        if d["kind"] in WORKLOAD_KINDS
    }


# a pod of another release and one of another app, in the same namespace
OUTSIDERS = [
    {"app.kubernetes.io/name": "vineppo", "app.kubernetes.io/instance": "other",
     "app.kubernetes.io/component": "trainer"},
    {"app.kubernetes.io/name": "jupyter", "app.kubernetes.io/component": "trainer"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("target", "allowed"),
    [("redis", {"rollout", "trainer"}), ("rollout", {"rollout", "trainer", "reward", "redis"}),
     ("reward", {"rollout", "trainer", "reward", "redis"})],
)  # fmt: skip
def test_network_policy_lets_only_chart_pods_in(
    rendered: list[dict[str, Any]], target: str, allowed: set[str]
) -> None:
    policy = find(rendered, "NetworkPolicy", f"-{target}")["spec"]
    chart_pods = pods(rendered)
    # 1) it selects exactly the target's pods
    assert {c for c, lab in chart_pods.items() if selects(policy["podSelector"], lab)} == {target}
    assert policy["policyTypes"] == ["Ingress"]
    # 2) one rule, on the target container's port, whose peers are pod selectors only
    (rule,) = policy["ingress"]
    ports = [p["containerPort"] for p in container(workload(rendered, target))["ports"]]
    assert rule["ports"] == [{"protocol": "TCP", "port": ports[0]}]
    assert all(set(peer) == {"podSelector"} for peer in rule["from"]), rule["from"]
    # 3) those peers admit exactly the allowed chart pods and nothing from outside the release
    admitted = {
        c
        for c, lab in chart_pods.items()
        if any(selects(peer["podSelector"], lab) for peer in rule["from"])
    }
    assert admitted == allowed
    assert not any(selects(p["podSelector"], o) for p in rule["from"] for o in OUTSIDERS)


def test_network_policy_off_and_extra_rollout_clients(helm_bin: str) -> None:
    off = render(helm_bin, f"apiToken.value={TOKEN}", "networkPolicy.enabled=false")
    assert not by_kind(off, "NetworkPolicy")
    extra = "networkPolicy.rolloutClients[0].namespaceSelector.matchLabels.team=ml"
    docs = render(helm_bin, f"apiToken.value={TOKEN}", extra)
    rollout = find(docs, "NetworkPolicy", "-rollout")["spec"]["ingress"][0]["from"]
    assert rollout[-1] == {"namespaceSelector": {"matchLabels": {"team": "ml"}}}
    for other in ("-redis", "-reward"):
        peers = find(docs, "NetworkPolicy", other)["spec"]["ingress"][0]["from"]
        assert all(set(p) == {"podSelector"} for p in peers), other
