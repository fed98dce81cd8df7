"""Trainer process settings (environment prefix ``VINEPPO_TRAINER_``).

Run hyperparameters live in the run config (a typed config file / CLI); these settings are
the deployment-level knobs: where services are, where checkpoints go.
"""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings, service_config


class TrainerSettings(ServiceSettings):
    model_config = service_config("VINEPPO_TRAINER_")

    reward_url: str = Field(
        default="http://127.0.0.1:8001", description="Base URL of the reward service."
    )
    rollout_url: str = Field(
        default="http://127.0.0.1:8002", description="Base URL of the rollout service."
    )
