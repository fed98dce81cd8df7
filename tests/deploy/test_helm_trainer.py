"""The trainer Job with several GPUs and several nodes (issue 30): one rank per GPU under
torchrun, an Indexed Job with a headless Service for the rendezvous across nodes, rendered by
`helm template` and checked here; torchrun's own argument parser reads the rendered command.

Nothing here runs a pod: there is no cluster and no GPU in these tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import TOKEN
from tests.deploy.manifests import (
    by_kind,
    chart_containers,
    find,
    pod_spec,
    render,
    settings_classes,
    stray_variables,
    unread_variables,
    vineppo_argv,
)
from tests.deploy.test_helm_security import OUTSIDERS, pods, selects

FOUR_GPUS = ("trainer.gpus=4",)
TWO_BY_FOUR = ("trainer.gpus=4", "trainer.nodes=2")


@pytest.fixture(scope="module")
def one_gpu(helm_bin: str) -> list[dict[str, Any]]:
    return render(helm_bin, f"apiToken.value={TOKEN}")


@pytest.fixture(scope="module")
def four_gpus(helm_bin: str) -> list[dict[str, Any]]:
    return render(helm_bin, f"apiToken.value={TOKEN}", *FOUR_GPUS)


@pytest.fixture(scope="module")
def two_by_four(helm_bin: str) -> list[dict[str, Any]]:
    return render(helm_bin, f"apiToken.value={TOKEN}", *TWO_BY_FOUR)


def _trainer(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the trainer Job, its one container)."""
    job = find(docs, "Job", "-trainer")
    (container,) = pod_spec(job)["containers"]
    return job, container


def _argv(container: dict[str, Any]) -> list[str]:
    return list(container.get("command", [])) + list(container.get("args", []))


def _flags(command: list[str]) -> dict[str, str]:
    """torchrun's --name=value options before --no-python, as {name: value}."""
    assert command[0] == "torchrun", command
    flags = command[1 : command.index("--no-python")]
    pairs = [f.partition("=") for f in flags]
    return {name: value for name, _, value in pairs}


def _gpus(container: dict[str, Any]) -> tuple[int, int]:
    res = container["resources"]
    return res["requests"]["nvidia.com/gpu"], res["limits"]["nvidia.com/gpu"]


def test_one_gpu_keeps_the_single_process_command(one_gpu: list[dict[str, Any]]) -> None:
    """trainer.gpus 1, nodes 1 (the defaults): `vineppo train`, no launcher, no Indexed Job,
    no rendezvous Service, no trainer NetworkPolicy: what the chart rendered before."""
    job, c = _trainer(one_gpu)
    assert c["command"] == ["vineppo", "train"]
    assert _gpus(c) == (1, 1)
    assert "completionMode" not in job["spec"] and "subdomain" not in pod_spec(job)
    assert not [
        s for s in by_kind(one_gpu, "Service") if s["metadata"]["name"].endswith("-trainer")
    ]
    assert not [
        p for p in by_kind(one_gpu, "NetworkPolicy") if p["metadata"]["name"].endswith("-trainer")
    ]


def test_four_gpus_start_four_ranks_on_one_node(
    one_gpu: list[dict[str, Any]], four_gpus: list[dict[str, Any]]
) -> None:
    """trainer.gpus 4: torchrun with a local rendezvous starts 4 ranks of the same command,
    and the pod gets 4 GPUs: one per rank."""
    job, c = _trainer(four_gpus)
    assert c["command"] == [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=4",
        "--no-python",
        "vineppo",
        "train",
    ]
    assert _gpus(c) == (4, 4) == (int(_flags(c["command"])["--nproc_per_node"]),) * 2
    # each rank runs exactly the single-GPU command (same options, same environment)
    _, single = _trainer(one_gpu)
    assert list(vineppo_argv(tuple(_argv(c)))) == _argv(single)
    assert c["env"] == single["env"]
    assert "completionMode" not in job["spec"] and "subdomain" not in pod_spec(job)


def test_two_nodes_by_four_gpus_rendezvous_at_pod_zero(two_by_four: list[dict[str, Any]]) -> None:
    """trainer.nodes 2, gpus 4: an Indexed Job of 2 pods (node rank = pod index) that reach
    pod 0 through the headless Service its pods are the subdomain of; 4 GPUs, 4 ranks each."""
    job, c = _trainer(two_by_four)
    spec, pod = job["spec"], pod_spec(job)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    svc = find(two_by_four, "Service", "-trainer")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    # only the trainer pods are behind it
    assert {
        k for k, lab in pods(two_by_four).items() if svc["spec"]["selector"].items() <= lab.items()
    } == {"trainer"}

    flags = _flags(c["command"])
    assert c["command"][c["command"].index("--no-python") :] == ["--no-python", "vineppo", "train"]
    assert flags["--nnodes"] == "2"
    assert flags["--node_rank"] == "$(JOB_COMPLETION_INDEX)"  # set by the Job controller
    assert "--standalone" not in flags
    # pod <index> of an Indexed Job is host <job>-<index>; with the subdomain it resolves as
    # <job>-0.<service> inside the namespace
    assert flags["--master_addr"] == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    (port,) = svc["spec"]["ports"]
    assert flags["--master_port"] == str(port["port"]) == str(port["targetPort"]) == "29500"
    assert len(f"{job['metadata']['name']}-1") <= 63  # a hostname is one DNS label
    # one GPU per rank: 4 ranks per pod, 4 GPUs per pod, 8 ranks in all
    assert _gpus(c) == (4, 4) and flags["--nproc_per_node"] == "4"
    assert int(flags["--nnodes"]) * int(flags["--nproc_per_node"]) == 8


@pytest.mark.parametrize("variant", ["four_gpus", "two_by_four"])
def test_torchrun_parses_the_rendered_command(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """torch's own torchrun parser and launch config read the rendered command as meant
    (the pod's $(JOB_COMPLETION_INDEX) expanded the way the kubelet would, here to 1)."""
    run = pytest.importorskip("torch.distributed.run")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else config_from_args sets it process-wide
    docs = request.getfixturevalue(variant)
    job, c = _trainer(docs)
    argv = [a.replace("$(JOB_COMPLETION_INDEX)", "1") for a in _argv(c)[1:]]
    args = run.get_args_parser().parse_args(argv)
    config, cmd, cmd_args = run.config_from_args(args)
    assert cmd == "vineppo" and cmd_args[:3] == ["train", "--algo", "vine"]
    assert config.nproc_per_node == 4
    if variant == "four_gpus":
        assert (config.min_nodes, config.max_nodes) == (1, 1)
        # torchrun.run() turns --standalone into a c10d rendezvous on localhost
        assert args.standalone
    else:
        assert (config.min_nodes, config.max_nodes) == (2, 2)
        assert args.node_rank == 1
        assert config.rdzv_backend == "static"
        name = job["metadata"]["name"]
        assert config.rdzv_endpoint == f"{name}-0.{name}:29500"


def test_multi_node_network_policy_lets_trainer_ranks_talk(
    two_by_four: list[dict[str, Any]],
) -> None:
    """With nodes > 1 the trainer pods accept traffic from this release's trainer pods only,
    on every port: the rendezvous port and the ports NCCL/Gloo pick at run time."""
    policy = find(two_by_four, "NetworkPolicy", "-trainer")["spec"]
    chart_pods = pods(two_by_four)
    assert {c for c, lab in chart_pods.items() if selects(policy["podSelector"], lab)} == {
        "trainer"
    }
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert "ports" not in rule
    admitted = {
        c
        for c, lab in chart_pods.items()
        if any(selects(peer["podSelector"], lab) for peer in rule["from"])
    }
    assert admitted == {"trainer"}
    assert not any(selects(p["podSelector"], o) for p in rule["from"] for o in OUTSIDERS)
    # Redis still lets the trainer in (every rank may use the queue)
    redis = find(two_by_four, "NetworkPolicy", "-redis")["spec"]["ingress"][0]["from"]
    assert any(selects(p["podSelector"], chart_pods["trainer"]) for p in redis)


@pytest.mark.parametrize("variant", ["four_gpus", "two_by_four"])
def test_launched_trainer_sets_only_read_settings(
    request: pytest.FixtureRequest, variant: str
) -> None:
    """The env drift checks see through the launcher: each rank runs `vineppo train`."""
    containers = chart_containers(request.getfixturevalue(variant))
    assert any(c.argv[0] == "torchrun" for c in containers)
    problems = stray_variables(containers, settings_classes()) + unread_variables(containers)
    assert not problems, "\n".join(problems)


def test_trainer_disabled_renders_no_rendezvous(helm_bin: str) -> None:
    docs = render(helm_bin, f"apiToken.value={TOKEN}", *TWO_BY_FOUR, "trainer.enabled=false")
    names = [d["metadata"]["name"] for d in docs]
    assert not [n for n in names if n.endswith("-trainer")], names
