"""Settings base built on pydantic-settings; each service subclasses it with its env prefix.

class RewardSettings(ServiceSettings):
    model_config = service_config("VINEPPO_REWARD_")
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
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
