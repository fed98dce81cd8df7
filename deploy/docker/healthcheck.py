"""Container HEALTHCHECK: GET /readyz on the port of the service this container serves.

Readiness, not liveness: compose starts a dependent service on `service_healthy`, so a
rollout container is healthy only once its model is loaded (and not after a failed load),
a reward container only with a live grader worker. `--path /healthz` probes liveness.

The images run one of `vineppo serve reward`, `vineppo serve rollout ...`, `vineppo train ...`
or `vineppo demo`. This script reads the command of PID 1, and for a `serve <service>` command
asks that service's own Settings class for its port (so VINEPPO_<SERVICE>_PORT is honoured);
any other command has no HTTP server and counts as healthy. Exit 0 = healthy, 1 = unhealthy.

    python /opt/vineppo/healthcheck.py            # inside a container
    python healthcheck.py --cmdline "vineppo serve reward" --port 8001   # by hand
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

SETTINGS = {
    "reward": ("services.reward.settings", "RewardSettings"),
    "rollout": ("services.rollout.settings", "RolloutSettings"),
}


def served_service(argv: list[str]) -> str | None:
    """The service named after `serve` in a command line, or None for non-serving commands."""
    for i, word in enumerate(argv[:-1]):
        if word == "serve" and argv[i + 1] in SETTINGS:
            return argv[i + 1]
    return None


def settings_port(service: str) -> int:
    """The port the service's Settings resolve to from this environment."""
    import importlib

    module, name = SETTINGS[service]
    settings = getattr(importlib.import_module(module), name)()
    return int(settings.port)


def check(url: str, timeout: float) -> bool:
    """True when GET url answers 200 within the timeout."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cmdline", help="command to inspect (default: PID 1's command line)")
    parser.add_argument("--port", type=int, help="port to probe (default: from the Settings)")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--path", default="/readyz", help="route to probe (default /readyz)")
    ns = parser.parse_args(args)
    if ns.cmdline is not None:
        argv = ns.cmdline.split()
    else:
        argv = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    service = served_service(argv)
    if service is None:
        return 0
    port = ns.port if ns.port is not None else settings_port(service)
    ok = check(f"http://127.0.0.1:{port}{ns.path}", ns.timeout)
    if not ok:
        print(f"{service}: GET http://127.0.0.1:{port}{ns.path} failed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
