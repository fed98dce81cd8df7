"""Settings base built on pydantic-settings; each service subclasses it with its env prefix.

class RewardSettings(ServiceSettings):
    model_config = service_config("VINEPPO_REWARD_")
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def service_config(prefix: str) -> SettingsConfigDict:
    """The settings config every service uses, with its own environment prefix."""
    return SettingsConfigDict(env_prefix=prefix, env_file=None, extra="ignore")


class ServiceSettings(BaseSettings):
    """Fields every service has. Environment: ``<PREFIX>HOST``, ``<PREFIX>PORT``, ..."""

    model_config = service_config("VINEPPO_")

    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    log_level: str = Field(default="info", description="uvicorn/logging level.")
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Requests larger than this get a 413."
    )
    redis_url: str | None = Field(
        default=None, description="redis://host:port/db; unset = in-process queue (embedded)."
    )
    checkpoint_root: Path = Field(
        default=Path("runs/checkpoints"), description="Volume where policy-vN/ dirs live."
    )
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token required by mutating endpoints (weights)."
    )
