"""Run a FastAPI app with uvicorn: in the foreground (``vineppo serve ...``) or on a loopback
port in a background thread (the embedded demo and the tests)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

from fastapi import FastAPI

from shared.logs import setup_logging
from shared.settings import ServiceSettings


def run(app: FastAPI, settings: ServiceSettings) -> None:
    """Serve in the foreground; ``app.state.server`` is the uvicorn server (an app may set its
    ``should_exit`` to stop itself, e.g. when its model cannot be loaded)."""
    import uvicorn

    setup_logging(settings.log_level)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level
    )
    server = uvicorn.Server(config)
    app.state.server = server
    server.run()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``GET url/readyz`` until 200 (or 404: the app has no readiness route).

    Raises ``RuntimeError`` naming the last answer when ``timeout`` passes first.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return
            body = exc.read()[:300]
            last = f"{exc.code} {body!r}"
            if b"state failed" in body:  # it will not get ready by waiting
                break
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready: {last}")


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, timeout: float = 60.0, *, ready: bool = True) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on 127.0.0.1 in a thread; yield its base URL.

    With ``ready`` (the default) it also waits until ``GET /readyz`` answers 200, so an app
    that loads its model in the background is serving when the block starts.
    """
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn server on port {port} did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    try:
        if ready:
            wait_ready(url, max(0.0, deadline - time.monotonic()), thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
