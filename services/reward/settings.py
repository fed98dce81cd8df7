"""Reward service settings (environment prefix ``VINEPPO_REWARD_``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.schemas.grade import MAX_GRADE_BATCH
from shared.settings import ServiceSettings, service_config


class RewardSettings(ServiceSettings):
    """How the grader service runs: port, worker pool, limits, batch size."""

    model_config = service_config("VINEPPO_REWARD_")

    port: int = Field(default=8001, ge=0, le=65535, description="TCP port.")
    workers: int = Field(default=2, ge=1, le=256, description="Sandboxed grader processes.")
    timeout_s: float = Field(
        default=2.0, gt=0.0, le=600.0, description="Hard wall-clock limit per graded item."
    )
    memory_mb: int = Field(
        default=1024, ge=0, description="Address-space limit per worker (RLIMIT_AS); 0 = none."
    )
    max_batch: int = Field(
        default=4096, ge=1, le=MAX_GRADE_BATCH, description="Most items per POST /v1/grade."
    )
    chunk_size: int = Field(
        default=128, ge=1, le=10_000, description="Items sent to a worker per pipe message."
    )
    fallbacks: bool = Field(
        default=True,
        description="Accept 'The answer is X' / last number when the '####' or box is missing.",
    )
    symbolic_caps: bool = Field(
        default=True,
        description="Skip symbolic checks on power towers, huge factorials etc. (tests only: off).",
    )
    require_token: bool = Field(
        default=False,
        description="Also require the bearer api_token on POST /v1/grade (off: loopback use).",
    )

    @model_validator(mode="after")
    def _token_for_required_auth(self) -> RewardSettings:
        if self.require_token and self.api_token is None:
            raise ValueError("require_token needs api_token")
        return self
