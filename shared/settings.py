"""Settings base built on pydantic-settings; each service subclasses it with its env prefix.

class RewardSettings(ServiceSettings):
    model_config = service_config("VINEPPO_REWARD_")
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EngineKind = Literal["auto", "torch", "vllm"]
"""The inference engines (``auto`` = by model size, ``services.rollout.engine.choose_engine``):
the one list the settings, the CLI options and ``make_engine`` check against."""
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)

MIN_TOKEN_CHARS = 16
"""Shortest API token a service accepts at start-up."""


def check_token_setting(token: SecretStr | None) -> SecretStr | None:
    """Validate a token setting: unset is fine; empty, short or with spaces is not.

    An empty token would accept ``Authorization: Bearer`` with nothing after it.
    """
    if token is None:
        return None
    value = token.get_secret_value()
    if len(value) < MIN_TOKEN_CHARS or any(c.isspace() for c in value):
        raise ValueError(
            f"api_token must be at least {MIN_TOKEN_CHARS} characters without spaces "
            "(unset it to disable token-guarded routes)"
        )
    return token


def service_config(prefix: str) -> SettingsConfigDict:
    """The settings config every service uses, with its own environment prefix; errors name
    the field but never echo its value (a token must not reach a log)."""
    return SettingsConfigDict(
        env_prefix=prefix, env_file=None, extra="ignore", hide_input_in_errors=True
    )


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
        default=None,
        description="redis://[:password@]host:port/db, or rediss://... for TLS (CA file: "
        "?ssl_ca_certs=/path/ca.crt); unset = in-process queue (embedded).",
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description="Password of the Redis at redis_url (requirepass / ACL user); merged into "
        "the URL, which may then carry none. Never logged.",
    )
    checkpoint_root: Path = Field(
        default=Path("runs/checkpoints"), description="Volume where policy-vN/ dirs live."
    )
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token required by mutating endpoints (weights)."
    )

    @field_validator("api_token", "reward_api_token", check_fields=False)
    @classmethod
    def _token_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        """Every service's tokens (its own ``api_token``, and ``reward_api_token`` where it
        has one): at least ``MIN_TOKEN_CHARS`` characters, no spaces."""
        return check_token_setting(v)

    @model_validator(mode="after")
    def _merge_redis_password(self) -> ServiceSettings:
        if self.redis_password is not None and self.redis_url:
            self.redis_url = with_redis_password(self.redis_url, self.redis_password)
        return self


def with_redis_password(url: str, password: SecretStr) -> str:
    """``url`` with ``password`` in it (percent-encoded). A URL that already names the same
    password is returned unchanged; one that names another is an error (which one wins would
    be a guess). Neither password appears in the message."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("redis_url must start with redis://, rediss:// or unix://")
    secret = password.get_secret_value()
    if not secret:
        raise ValueError("redis_password is empty: unset it or give the password")
    if parts.password is not None:
        if unquote(parts.password) != secret:
            raise ValueError("redis_url carries a password that differs from redis_password")
        return url
    user = quote(unquote(parts.username), safe="") if parts.username else ""
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{quote(secret, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
