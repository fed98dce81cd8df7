"""Reward service settings (environment prefix ``VINEPPO_REWARD_``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings, service_config


class RewardSettings(ServiceSettings):
    model_config = service_config("VINEPPO_REWARD_")

    port: int = Field(default=8001, ge=0, le=65535, description="TCP port.")
