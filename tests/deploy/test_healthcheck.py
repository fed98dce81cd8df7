"""The images' HEALTHCHECK script (deploy/docker/healthcheck.py), run as the container runs it
(a subprocess) against a real uvicorn server answering /healthz."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Response

from tests.deploy.manifests import ROOT
from tests.support import free_port, serve_app

SCRIPT = ROOT / "deploy" / "docker" / "healthcheck.py"
pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, dict[str, int]]]:
    """A /healthz server whose status code the test sets; yields (port, state)."""
    state = {"status": 200, "live": 200}
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> Response:
        return Response(status_code=state["status"])

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(status_code=state["live"])

    with serve_app(app) as url:
        yield int(url.rsplit(":", 1)[1].rstrip("/")), state


def run(*args: str, env: dict[str, str] | None = None) -> int:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return proc.returncode


def test_healthy_and_unhealthy(server: tuple[int, dict[str, int]]) -> None:
    port, state = server
    state["status"] = 200
    assert run("--cmdline", "vineppo serve reward", "--port", str(port)) == 0
    state["status"] = 503  # alive but not ready (loading, failed load, no grader): unhealthy
    assert run("--cmdline", "vineppo serve reward", "--port", str(port)) == 1
    assert run("--cmdline", "vineppo serve reward", "--port", str(port), "--path", "/healthz") == 0
    state["status"] = 200


def test_port_comes_from_the_service_settings(server: tuple[int, dict[str, int]]) -> None:
    port, _ = server
    cmd = "/opt/venv/bin/vineppo serve rollout --model /models/policy --engine vllm"
    assert run("--cmdline", cmd, env={"VINEPPO_ROLLOUT_PORT": str(port)}) == 0
    assert run("--cmdline", cmd, env={"VINEPPO_ROLLOUT_PORT": str(free_port())}) == 1


def test_commands_without_a_server_are_healthy() -> None:
    assert run("--cmdline", "vineppo train --algo vine --config /etc/vineppo/run.yaml") == 0
    assert run("--cmdline", "vineppo demo") == 0
