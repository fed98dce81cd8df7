"""Redis credentials: the one-line error when Redis refuses a client, and the start-up check
that raises it (``check_credentials``), shared by every process that talks to the queue."""

from __future__ import annotations

import errno
import logging

from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
REFUSED = (AuthenticationError, NoPermissionError)  # AuthenticationError is a ConnectionError


class RedisAuthError(PermissionError):
    """Redis refused this client's credentials (missing, wrong or unexpected password, or an
    ACL user without the rights): a configuration mistake, so it is never retried. A
    ``PermissionError``: the ``vineppo`` CLI prints it as one line, ``<url>: <why>``, exit 2.
    Neither the message nor ``filename`` (the URL without credentials) holds the password."""

    def __init__(self, url: str, reason: object):
        said = " ".join(str(reason).split())[:120] or type(reason).__name__
        fix = (
            "set it in the URL (redis://:PASSWORD@host:port/db) or in "
            "VINEPPO_<SERVICE>_REDIS_PASSWORD"
        )
        if _is_tls_refusal(reason):
            what = f"TLS: Redis's certificate was not accepted ({said})"
            fix = "give the CA that signed it: rediss://host:port/db?ssl_ca_certs=/path/ca.crt"
        elif isinstance(reason, NoPermissionError):
            what = f"the Redis user lacks a permission ({said})"
        elif _has_password(url):
            what = f"Redis refused the password ({said})"
        else:
            what = f"Redis requires a password and none was given ({said})"
        super().__init__(errno.EACCES, f"{what}; {fix}", redact_url(url))


def _is_tls_refusal(exc: object) -> bool:
    return "certificate verify failed" in str(exc).lower()


def _has_password(url: str) -> bool:
    netloc = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    return "@" in netloc and ":" in netloc.rpartition("@")[0]


def check_credentials(url: str, timeout_s: float = 2.0) -> None:
    """One ``PING`` with a short-lived client: raise :class:`RedisAuthError` now when Redis
    refuses the credentials, so a process fails at start-up with one line instead of inside
    its workers. An unreachable Redis passes (it may start later; the queue retries)."""
    from redis import Redis as SyncRedis
    from redis.retry import Retry as SyncRetry

    client = SyncRedis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=SyncRetry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except REFUSED as exc:
        raise RedisAuthError(url, exc) from None
    except TRANSIENT as exc:
        if _is_tls_refusal(exc):  # a wrong CA does not heal by waiting
            raise RedisAuthError(url, exc) from None
        log.info("redis at %s not reachable yet (%s); the queue will retry", redact_url(url), exc)
    finally:
        client.close()


def redact_url(url: str) -> str:
    """``url`` without user, password and query (which may name key files)."""
    scheme, sep, rest = url.partition("://")
    rest = rest.split("?", 1)[0].rpartition("@")[2]
    return f"{scheme}{sep}{rest}"
