"""Where a training run's services are: `TrainerSettings` (environment) merged with the
command line, and the start-up check of the rollout service.

    wiring = resolve_wiring(TrainerSettings(), out, redis_url=None, ...)  # CLI None = env
    check_rollout(wiring)      # before the model loads: /readyz, then a 1-token generate

Command-line values win over ``VINEPPO_TRAINER_*``; the Redis password setting is merged into
whichever Redis URL wins (a URL that names another password is an error).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.trainer.settings import TrainerSettings
from shared.settings import with_redis_password

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wiring:
    """Everything ``vineppo train`` connects to; secrets stay plain only in memory."""

    redis_url: str | None
    reward_url: str | None  # None: start a reward service on loopback
    reward_token: str | None
    rollout_url: str | None  # None: no start-up check
    rollout_token: str | None
    policy_root: Path  # policy-vN/ for the replicas (the shared volume)
    local_replicas: int
    engine: str  # of the local replicas
    rollout_timeout_s: float
    log_level: str

    def __repr__(self) -> str:  # never print a token or a URL's password
        redis = "set" if self.redis_url else "in-process"
        return (
            f"Wiring(redis={redis}, reward={self.reward_url or 'local'}, "
            f"rollout={self.rollout_url}, policy_root={self.policy_root}, "
            f"local_replicas={self.local_replicas})"
        )


def _secret(value: object) -> str | None:
    return None if value is None else value.get_secret_value()  # type: ignore[attr-defined]


def resolve_wiring(
    settings: TrainerSettings,
    output_dir: Path,
    *,
    redis_url: str | None = None,
    reward_url: str | None = None,
    checkpoint_root: Path | None = None,
    local_replicas: int | None = None,
    engine: str | None = None,
) -> Wiring:
    """Merge the command line (non-None wins) over ``settings``; ``ValueError`` on a bad mix."""
    if redis_url is not None and settings.redis_password is not None:
        redis_url = with_redis_password(redis_url, settings.redis_password)
    redis = redis_url if redis_url is not None else settings.redis_url
    replicas = settings.local_replicas if local_replicas is None else local_replicas
    if redis is None and replicas < 1:
        raise ValueError("local_replicas=0 needs a Redis queue (VINEPPO_TRAINER_REDIS_URL)")
    root = checkpoint_root or settings.checkpoint_root or Path(output_dir) / "policies"
    return Wiring(
        redis_url=redis,
        reward_url=reward_url or settings.reward_url,
        reward_token=_secret(settings.reward_api_token),
        rollout_url=settings.rollout_url,
        rollout_token=_secret(settings.api_token),
        policy_root=Path(root),
        local_replicas=replicas,
        engine=engine or settings.engine,
        rollout_timeout_s=settings.rollout_timeout_s,
        log_level=settings.log_level.upper(),
    )


class RolloutUnavailable(RuntimeError):
    """The rollout service at ``rollout_url`` never became ready or refused the token."""


def check_rollout(wiring: Wiring, poll_s: float = 2.0) -> None:
    """Wait until ``rollout_url/readyz`` is 200, then send one 1-token ``/v1/generate`` with
    the bearer token (a rollout with REQUIRE_TOKEN refuses a wrong one: 401). No-op without
    ``rollout_url``. Raises `RolloutUnavailable` with a one-line reason."""
    if wiring.rollout_url is None:
        return
    url = wiring.rollout_url.rstrip("/")
    headers = {"Authorization": f"Bearer {wiring.rollout_token}"} if wiring.rollout_token else {}
    deadline = time.monotonic() + wiring.rollout_timeout_s
    why = "no answer"
    with httpx.Client(base_url=url, headers=headers, timeout=30.0) as http:
        while True:
            try:
                resp = http.get("/readyz")
                if resp.status_code == 200:
                    break
                why = f"/readyz {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise RolloutUnavailable(
                    f"rollout service at {url} not ready after {wiring.rollout_timeout_s:.0f} s"
                    f" ({why})"
                )
            time.sleep(poll_s)
        body = {"prompts": ["1+1="], "n": 1, "sampling": {"max_tokens": 1, "seed": 0}}
        resp = http.post("/v1/generate", json=body)
    if resp.status_code in (401, 403):
        raise RolloutUnavailable(
            f"rollout service at {url} refused the API token ({resp.status_code}): set "
            "VINEPPO_TRAINER_API_TOKEN to the rollout's VINEPPO_ROLLOUT_API_TOKEN"
        )
    if resp.status_code != 200:
        raise RolloutUnavailable(f"rollout service at {url}: /v1/generate {resp.status_code}")
    log.info("rollout service at %s ready (policy v%s)", url, resp.json()["policy_version"])
