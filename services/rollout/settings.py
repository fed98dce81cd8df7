"""Rollout service settings (environment prefix ``VINEPPO_ROLLOUT_``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings, service_config


class RolloutSettings(ServiceSettings):
    model_config = service_config("VINEPPO_ROLLOUT_")

    port: int = Field(default=8002, ge=0, le=65535, description="TCP port.")
    reward_url: str = Field(
        default="http://127.0.0.1:8001", description="Base URL of the reward service."
    )
