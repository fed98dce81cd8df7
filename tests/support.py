"""Test infrastructure: real uvicorn servers on 127.0.0.1 and real redis-server processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from shared.serve import free_port as _free_port
from shared.serve import serve_in_thread


def free_port() -> int:
    return _free_port()


def serve_app(app: FastAPI, timeout: float = 30.0) -> contextlib.AbstractContextManager[str]:
    """Run ``app`` under a real uvicorn server in a thread; yield its base URL."""
    return serve_in_thread(app, timeout)


@dataclass
class RedisProcess:
    """A private redis-server on a free loopback port (append-only file in a temp dir;
    ``flags`` = its persistence settings)."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    flags: tuple[str, ...] = ("--appendonly", "yes", "--appendfsync", "always")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (.ci/run installs it)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *self.flags,
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # up and done loading the append-only file
            with contextlib.suppress(redis.exceptions.RedisError):
                if redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final fsync (what a crash does)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_process() -> Iterator[RedisProcess]:
    with tempfile.TemporaryDirectory(prefix="vineppo-redis-") as d:
        r = RedisProcess(port=free_port(), dir=Path(d))
        r.start()
        try:
            yield r
        finally:
            r.stop()


def redis_url_from_env() -> str | None:
    return os.environ.get("REDIS_URL") or None
