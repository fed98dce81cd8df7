"""Rollout service settings (environment prefix ``VINEPPO_ROLLOUT_``).

Inherited from ``ServiceSettings``: host, port, log_level, max_body_bytes, redis_url,
checkpoint_root (``POST /v1/weights`` only loads from under it) and api_token (the bearer
token ``POST /v1/weights`` requires; unset = weight pushes over HTTP are refused; empty or
shorter than 16 characters = refused at start-up). ``require_token`` puts the same token on
``/v1/generate`` and ``/v1/value``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from shared.schemas.rollout import MAX_BATCH, MAX_SCHEMA_ITEMS
from shared.settings import EngineKind, ServiceSettings, service_config


class RolloutSettings(ServiceSettings):
    model_config = service_config("VINEPPO_ROLLOUT_")

    port: int = Field(default=8002, ge=0, le=65535, description="TCP port.")
    reward_url: str = Field(
        default="http://127.0.0.1:8001", description="Base URL of the reward service."
    )
    model_dir: Path | None = Field(
        default=None, description="Local model directory (transformers format) to serve."
    )
    engine: EngineKind = Field(
        default="auto",
        description="Inference engine; auto = vllm for models of 20 M parameters or more "
        "when it is installed, else torch (docs/rollout.md: the measurements).",
    )
    kv_cache_gib: float = Field(
        default=2.0, gt=0, description="vLLM on CPU: host memory for the KV cache (GiB)."
    )
    enforce_eager: bool | None = Field(
        default=None, description="vLLM: no CUDA graphs/torch.compile; unset = eager on CPU only."
    )
    gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="vLLM on a GPU: share of its memory to use."
    )
    device: str = Field(default="cpu", description="torch device for the torch engine: cpu, cuda.")
    dtype: str | None = Field(
        default=None, description="float32 | bfloat16 | float16; default fp32 on CPU, bf16 on GPU."
    )
    max_batch: int = Field(default=64, ge=1, le=4096, description="Rows decoded together.")
    min_k: int = Field(default=1, ge=1, description="Smallest k accepted by /v1/value.")
    max_k: int = Field(default=256, ge=1, le=256, description="Largest k accepted by /v1/value.")
    value_cache_entries: int = Field(
        default=4096,
        ge=0,
        description="States whose MC returns the replica keeps for seeded value requests of "
        "the policy version it serves (emptied by every weight load); 0 = no cache.",
    )
    max_items: int = Field(
        default=MAX_BATCH,
        ge=1,
        le=MAX_SCHEMA_ITEMS,
        description="Most prompts/items one request may carry (more: 413).",
    )
    max_weights_bytes: int = Field(
        default=64 * 1024**3, ge=1, description="Largest total size of one policy's shards."
    )
    grade_timeout_s: float = Field(default=60.0, gt=0, description="Reward service timeout.")
    reward_api_token: SecretStr | None = Field(
        default=None, description="Bearer token sent to a reward service with REQUIRE_TOKEN."
    )
    require_token: bool = Field(
        default=False,
        description="Also require the bearer api_token on /v1/generate and /v1/value "
        "(off: loopback use).",
    )
    # the queue consumer (with redis_url set): docs/queue.md
    replica_id: str | None = Field(
        default=None, description="This replica's name in the queue; unset = <hostname>-<pid>."
    )
    queue_prefix: str = Field(
        default="vineppo:", min_length=1, description="Redis key prefix of the job queue."
    )
    fetch_batch: int = Field(default=1, ge=1, le=1024, description="Jobs taken per fetch.")
    heartbeat_s: float = Field(
        default=1.0, gt=0, description="Heartbeat period; also refreshes in-flight deliveries."
    )
    heartbeat_ttl_s: float = Field(
        default=5.0, gt=0, description="A replica silent this long counts as gone."
    )
    claim_idle_ms: int = Field(
        default=10_000,
        ge=1,
        description="A delivery idle this long belonged to a dead replica and is reclaimed.",
    )

    @field_validator("model_dir", mode="before")
    @classmethod
    def _model_dir_not_empty(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():  # Path("") would be the current directory
            raise ValueError("model_dir is empty: unset it or name the model directory")
        return v

    @model_validator(mode="after")
    def _k_bounds(self) -> RolloutSettings:
        if self.min_k > self.max_k:
            raise ValueError(f"min_k ({self.min_k}) must be <= max_k ({self.max_k})")
        if self.require_token and self.api_token is None:
            raise ValueError("require_token needs api_token")
        if self.heartbeat_ttl_s <= self.heartbeat_s:
            raise ValueError(
                f"heartbeat_ttl_s ({self.heartbeat_ttl_s}) must exceed heartbeat_s "
                f"({self.heartbeat_s}): a live replica would count as gone between beats"
            )
        return self
