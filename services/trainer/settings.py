"""Trainer process settings (environment prefix ``VINEPPO_TRAINER_``).

Run hyperparameters live in the run config (a typed config file / CLI); these settings are
the deployment-level knobs: where services are, where checkpoints go.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shared.http import check_token_setting
from shared.settings import ServiceSettings, service_config


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        **service_config("VINEPPO_TRAINER_"), hide_input_in_errors=True
    )

    reward_url: str = Field(
        default="http://127.0.0.1:8001", description="Base URL of the reward service."
    )
    rollout_url: str = Field(
        default="http://127.0.0.1:8002", description="Base URL of the rollout service."
    )

    @field_validator("api_token")
    @classmethod
    def _token_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        return check_token_setting(v)
