"""The Helm chart: `helm lint` / `helm template` pass, the manifests validate against the
Kubernetes schemas (kubernetes-validate, offline), and the parts the deploy issue asks for are
wired the way the services need them."""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any, get_args

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import TOKEN
from tests.deploy.manifests import CHART, by_kind, find, helm, kind_name, pod_spec, render

KUBE_VERSION = "1.31"  # the Kubernetes the bundled Helm (kubectl layer v31) targets


def test_helm_lint_passes(helm_bin: str) -> None:
    proc = helm(helm_bin, "lint", "--strict", str(CHART), "--set", f"apiToken.value={TOKEN}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


VARIANTS = {
    "defaults": [],
    "external-redis-existing-secret-no-hpa": [
        "redis.enabled=false",
        "redis.externalUrl=redis://redis.example:6379/0",
        "apiToken.existingSecret=my-token",
        "reward.autoscaling.enabled=false",
        "rollout.pdb.enabled=false",
        "trainer.enabled=false",
        "storage.checkpoints.existingClaim=shared-ckpt",
        "rollout.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=gpu-type",
        "rollout.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    ],
    "redis-tls-existing-password-rollout-clients": [
        "redis.tls.enabled=true",
        "redis.tls.existingSecret=redis-tls",
        "redis.auth.existingSecret=redis-pw",
        "networkPolicy.rolloutClients[0].namespaceSelector.matchLabels.team=ml",
    ],
    "no-auth-no-netpol": ["redis.auth.enabled=false", "networkPolicy.enabled=false"],
    "trainer-4-gpus": ["trainer.gpus=4"],
    "trainer-2-nodes-x-4-gpus": ["trainer.gpus=4", "trainer.nodes=2"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_manifests_validate_against_kubernetes_schemas(helm_bin: str, variant: str) -> None:
    docs = render(helm_bin, f"apiToken.value={TOKEN}", *VARIANTS[variant])
    assert len(docs) >= 5
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{kind_name(doc)}: {path}: {e.message}")
    assert not errors, "\n".join(errors)


def test_kubernetes_validation_catches_a_bad_manifest(rendered: list[dict[str, Any]]) -> None:
    """The validator is not a rubber stamp: a misspelt field and a wrong type are rejected."""
    dep = copy.deepcopy(find(rendered, "Deployment", "-rollout"))
    dep["spec"]["replica"] = 2  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)
    dep = copy.deepcopy(find(rendered, "Deployment", "-rollout"))
    _container(dep)["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)


def test_chart_renders_every_component(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] + d["metadata"]["name"].removeprefix("t-vineppo") for d in rendered)
    for expected in [
        "Deployment-rollout",
        "Deployment-reward",
        "HorizontalPodAutoscaler-reward",
        "PodDisruptionBudget-rollout",
        "Job-trainer",
        "StatefulSet-redis",
        "PersistentVolumeClaim-checkpoints",
        "PersistentVolumeClaim-models",
        "Secret-api-token",
        "Secret-redis-auth",
        "NetworkPolicy-redis",
        "NetworkPolicy-rollout",
        "NetworkPolicy-reward",
        "ConfigMap-run-config",
        "Service-rollout",
        "Service-reward",
        "Service-redis",
    ]:
        assert expected in kinds, f"{expected} not rendered; got {kinds}"


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(doc)["containers"]
    assert len(containers) == 1
    return containers[0]


def test_rollout_on_gpu_nodes_with_readyz_readiness(rendered: list[dict[str, Any]]) -> None:
    dep = find(rendered, "Deployment", "-rollout")
    assert dep["spec"]["replicas"] == 2
    spec, c = pod_spec(dep), _container(dep)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    spread = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    for probe, path in (
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
    ):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    reward = _container(find(rendered, "Deployment", "-reward"))
    assert reward["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert reward["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["ports"] == [{"name": "http", "containerPort": 8002}]
    assert c["command"] + c["args"] == [
        "vineppo",
        "serve",
        "rollout",
        "--model",
        "/models/policy",
        "--engine",
        "vllm",
    ]


def test_gpu_only_where_needed(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            limits = _container(doc)["resources"].get("limits", {})
            wants_gpu = doc["metadata"]["name"].endswith(("-rollout", "-trainer"))
            assert ("nvidia.com/gpu" in limits) == wants_gpu, kind_name(doc)


def test_pdb_and_hpa_select_their_workloads(rendered: list[dict[str, Any]]) -> None:
    pdb = find(rendered, "PodDisruptionBudget", "-rollout")
    rollout = find(rendered, "Deployment", "-rollout")
    assert pdb["spec"]["selector"] == rollout["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = rollout["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find(rendered, "HorizontalPodAutoscaler", "-reward")
    reward = find(rendered, "Deployment", "-reward")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": reward["metadata"]["name"],
    }
    assert "replicas" not in reward["spec"], "the HPA owns the reward replica count"
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_redis_statefulset_persists_append_only(rendered: list[dict[str, Any]]) -> None:
    sts = find(rendered, "StatefulSet", "-redis")
    c = _container(sts)
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"


def test_checkpoint_and_model_volumes_are_rwx(rendered: list[dict[str, Any]]) -> None:
    claims = {d["metadata"]["name"]: d for d in by_kind(rendered, "PersistentVolumeClaim")}
    for name in ("t-vineppo-checkpoints", "t-vineppo-models"):
        assert claims[name]["spec"]["accessModes"] == ["ReadWriteMany"], name
    for suffix in ("-rollout", "-trainer"):
        doc = find(rendered, "Deployment" if suffix == "-rollout" else "Job", suffix)
        vols = {v["name"]: v for v in pod_spec(doc)["volumes"]}
        assert vols["checkpoints"]["persistentVolumeClaim"]["claimName"] == "t-vineppo-checkpoints"
        assert vols["models"]["persistentVolumeClaim"]["claimName"] == "t-vineppo-models"


def test_secret_and_run_config_are_wired(rendered: list[dict[str, Any]]) -> None:
    secret = find(rendered, "Secret", "-api-token")
    assert base64.b64decode(secret["data"]["api-token"]).decode() == TOKEN
    for doc in (find(rendered, "Deployment", "-rollout"), find(rendered, "Job", "-trainer")):
        refs = [e["valueFrom"]["secretKeyRef"] for e in _container(doc)["env"] if "valueFrom" in e]
        tokens = [r for r in refs if r["key"] == "api-token"]
        assert tokens == [{"name": secret["metadata"]["name"], "key": "api-token"}]
    job = find(rendered, "Job", "-trainer")
    c, cm = _container(job), find(rendered, "ConfigMap", "-run-config")
    config_path = c["args"][c["args"].index("--config") + 1]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "run-config")
    vol = next(v for v in pod_spec(job)["volumes"] if v["name"] == "run-config")
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    assert config_path == f"{mount['mountPath']}/{next(iter(cm['data']))}"
    assert c["args"][:2] == ["--algo", "vine"] and c["command"] == ["vineppo", "train"]
    # the rollout Deployment serves the queue: the trainer starts no engine of its own
    assert {"name": "VINEPPO_TRAINER_LOCAL_REPLICAS", "value": "0"} in c["env"]


def test_trainer_run_directory_survives_a_pod_restart(rendered: list[dict[str, Any]]) -> None:
    """The Job restarts its pod on failure: the run directory must be on a volume and the
    command must resume, or a restart starts the run over (as it did before issue 18)."""
    c = _container(find(rendered, "Job", "-trainer"))
    out = c["args"][c["args"].index("--output-dir") + 1]
    assert "--resume" in c["args"]
    mounts = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "checkpoints"]
    assert mounts and out.startswith(mounts[0] + "/") and out.endswith("/t-vineppo")


def test_pods_run_as_non_root(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            assert pod_spec(doc)["securityContext"]["runAsNonRoot"] is True, kind_name(doc)
            image = _container(doc)["image"]
            assert re.search(r":[\w.-]*\d", image) and not image.endswith(":latest"), image


def test_missing_token_fails_with_clear_message(helm_bin: str) -> None:
    proc = helm(helm_bin, "template", "t", str(CHART))
    assert proc.returncode != 0
    assert "set apiToken.value or apiToken.existingSecret" in proc.stderr


@pytest.mark.parametrize("token", ["x", "short-token", "has spaces but long enough"])
def test_short_token_is_refused_at_render(helm_bin: str, token: str) -> None:
    proc = helm(helm_bin, "template", "t", str(CHART), "--set", f"apiToken.value={token}")
    assert proc.returncode != 0 and "apiToken.value" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ("rollout.replicas=0", "rollout.replicas"),
        ("rollout.enigne=vllm", "enigne"),
        ("rollout.engine=tensorrt", "rollout.engine"),
        ("images.cuda.tag=latest", "images.cuda.tag"),
        ("trainer.algo=reinforce", "trainer.algo"),
        ("rollout.extraEnv[0].name=HF_TOKEN", "rollout.extraEnv.0.name"),
        ("trainer.gpus=0", "trainer.gpus"),
        ("trainer.nodes=0", "trainer.nodes"),
        ("trainer.nodes=two", "trainer.nodes"),
        ("trainer.rendezvousPort=80", "trainer.rendezvousPort"),
    ],
)
def test_schema_rejects_bad_values(helm_bin: str, override: str, complaint: str) -> None:
    proc = helm(
        helm_bin, "template", "t", str(CHART), "--set", f"apiToken.value={TOKEN}", "--set", override
    )
    assert proc.returncode != 0, f"{override} was accepted"
    assert complaint in proc.stderr, proc.stderr


def _value_lines() -> list[tuple[list[str], bool]]:
    """(key path, documented?) of every mapping key in values.yaml; a key is documented by a
    `# --` comment above it or by a documented ancestor (whose whole value it is part of)."""
    out: list[tuple[list[str], bool]] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment_block: list[str] = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment_block.append(stripped)
            continue
        match = re.match(r"^( *)([A-Za-z0-9_.\-/\"]+):", line)
        if not match:
            comment_block = [] if not stripped else comment_block
            continue
        indent, key = len(match.group(1)), match.group(2).strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = any(c.startswith("# --") for c in comment_block)
        documented = documented or any(d for _, _, d in stack)
        stack.append((indent, key, documented))
        out.append(([k for _, k, _ in stack], documented))
        comment_block = []
    return out


def test_every_value_documented_and_in_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    leaves = [(path, doc) for path, doc in _value_lines()]
    assert len(leaves) > 50
    undocumented = [".".join(p) for p, doc in leaves if not doc and _is_leaf(values, p)]
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    missing = []
    for path, _ in leaves:
        node = schema
        for key in path:
            props = node.get("properties", {})
            if key not in props:
                if node.get("additionalProperties") is False:
                    missing.append(".".join(path))
                break
            node = props[key]
    assert not missing, f"values.yaml keys missing from values.schema.json: {missing}"


def _is_leaf(values: dict[str, Any], path: list[str]) -> bool:
    node: Any = values
    for key in path:
        node = node[key]
    return not isinstance(node, dict) or not node


def test_readme_names_the_rwx_storage_class() -> None:
    readme = (CHART / "README.md").read_text()
    assert "ReadWriteMany" in readme and "storageClassName" in readme
    for key, _ in _value_lines():
        if len(key) == 1:
            assert f"`{key[0]}" in readme, f"chart README does not mention {key[0]}"


def test_engine_choices_match_the_rollout_settings() -> None:
    """values.schema.json's rollout.engine enum is the engine Literal of RolloutSettings."""
    from services.rollout.settings import RolloutSettings

    schema = json.loads((CHART / "values.schema.json").read_text())
    enum = set(schema["properties"]["rollout"]["properties"]["engine"]["enum"])
    field = RolloutSettings.model_fields.get("engine")
    choices = set(get_args(field.annotation)) if field is not None else {"torch", "vllm"}
    assert enum == choices, f"chart allows {sorted(enum)}, RolloutSettings.engine {sorted(choices)}"
