"""Trainer process settings (environment prefix ``VINEPPO_TRAINER_``).

Run hyperparameters live in the run config (a typed config file / CLI); these settings are
the deployment-level knobs: where services are, where policies go. ``vineppo train`` builds
one ``TrainerSettings()`` and uses every field (command-line options win over the
environment):

- ``redis_url`` (+ ``redis_password``, merged into it): the job queue; unset = in-process;
- ``reward_url`` / ``reward_api_token``: the reward service and its bearer token; unset URL =
  the trainer starts one on loopback;
- ``rollout_url`` / ``api_token``: checked once at start (``/readyz``, then a 1-token
  ``/v1/generate`` with the bearer token) so a wrong URL or token fails before the model loads;
- ``checkpoint_root``: where ``policy-vN/`` are written for the replicas (the rollout's
  ``checkpoint_root`` must be the same volume); unset = ``<output_dir>/policies``;
- ``local_replicas``: rollout workers inside the trainer (0 when replicas run elsewhere);
- ``engine``: their inference engine, ``auto``, ``torch`` or ``vllm`` (docs/rollout.md).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from shared.settings import EngineKind, ServiceSettings, service_config


class TrainerSettings(ServiceSettings):
    model_config = service_config("VINEPPO_TRAINER_")

    reward_url: str | None = Field(
        default=None, description="Base URL of the reward service; unset = start one on loopback."
    )
    reward_api_token: SecretStr | None = Field(
        default=None, description="Bearer token sent to a reward service with REQUIRE_TOKEN."
    )
    rollout_url: str | None = Field(
        default=None,
        description="Base URL of a rollout service checked at start (ready, token accepted); "
        "unset = no check (replicas are found through Redis either way).",
    )
    checkpoint_root: Path | None = Field(  # type: ignore[assignment]
        default=None,
        description="Where policy-vN/ dirs are written for the replicas (the shared volume); "
        "unset = <output_dir>/policies.",
    )
    local_replicas: int = Field(
        default=1, ge=0, description="Rollout workers inside the trainer (needs Redis when 0)."
    )
    engine: EngineKind = Field(
        default="auto", description="Inference engine of the local replicas (as the rollout's)."
    )
    rollout_timeout_s: float = Field(
        default=600.0, gt=0, description="How long the start-up check waits for rollout_url."
    )
