"""`vineppo serve rollout` as a real subprocess, queried with `vineppo value`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.services.rollout.conftest import PROMPT
from tests.support import free_port

pytestmark = pytest.mark.server


def _wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("rollout server did not become healthy")


def test_serve_rollout_and_value_cli(
    trained_model_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli", "serve", "rollout", "--model",
           str(trained_model_dir), "--port", str(port), "--reward-url", reward_url]  # fmt: skip
    log = tmp_path / "server.log"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        args = ["value", "--url", url, "--prompt", PROMPT, "--partial", "Tom starts with 3",
                "--gold", "7", "--k", "4", "--temperature", "0.5", "--max-tokens", "48",
                "--seed", "0"]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        body = json.loads(result.output)
        assert body["values"][0]["value"] == 1.0 and len(body["values"][0]["returns"]) == 4
        bad = CliRunner().invoke(app, [*args[:-6], "--k", "4", "--dataset", "aime"])
        assert bad.exit_code == 1 and json.loads(bad.output)["error"] == "validation_error"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_rollout_help_lists_options() -> None:
    result = CliRunner().invoke(app, ["serve", "rollout", "--help"])
    assert result.exit_code == 0 and "--engine" in result.output
