"""Redis with credentials, against a real ``redis-server --requirepass`` (and one with TLS) on
a free loopback port: the queue connects with the password, from the URL or from the
``redis_password`` setting; a missing or wrong password (or an unknown CA) fails at once with
one line that names the fix and never the password, in the queue and in the ``vineppo`` CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import SecretStr, ValidationError

from services.rollout.settings import RolloutSettings
from shared.queue import make_queue
from shared.queue.redis_streams import RedisAuthError, RedisQueue
from shared.schemas import GenerateRequest, Job
from shared.serve import free_port

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "p@ss:w/rd-for-tests-0123"  # URL-special characters on purpose


@contextlib.contextmanager
def redis_server(*args: str) -> Iterator[int]:
    """A private redis-server on a free loopback port with extra ``args``; yields the port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found on PATH (.ci/run installs it)")
    port = free_port()
    listen = ["--port", str(port)] if "--tls-port" not in args else ["--port", "0"]
    argv = [binary, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *args]
    proc = subprocess.Popen(
        [a.replace("{port}", str(port)) for a in argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        else:
            out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
            pytest.fail(f"redis-server did not start on port {port}: {out[-500:]}")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def locked() -> Iterator[int]:
    with redis_server("--requirepass", PASSWORD) as port:
        yield port


def job() -> Job:
    return Job(kind="generate", policy_version=0, generate=GenerateRequest(prompts=["1+1="]))


async def round_trip(url: str) -> None:
    queue = make_queue(url, prefix="auth-test:")
    try:
        sent = job()
        await queue.submit(sent)
        got = await queue.fetch(0, "w1", count=1, block_ms=200)
        assert [j.job_id for _, j in got] == [sent.job_id]
        await queue.ack(got[0][0])
    finally:
        await queue.close()


async def test_connects_with_the_password_from_settings(locked: int) -> None:
    """redis_password is merged (percent-encoded) into a URL that carries none."""
    settings = RolloutSettings(
        redis_url=f"redis://127.0.0.1:{locked}/0",
        redis_password=SecretStr(PASSWORD),
    )
    assert settings.redis_url is not None and PASSWORD not in settings.redis_url  # encoded
    await round_trip(settings.redis_url)
    # the same password already in the URL is accepted unchanged
    same = RolloutSettings(redis_url=settings.redis_url, redis_password=SecretStr(PASSWORD))
    assert same.redis_url == settings.redis_url


def test_a_different_password_in_url_and_field_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        RolloutSettings(
            redis_url="redis://:one-secret-xyz@h:6379/0", redis_password=SecretStr("other-pw")
        )
    text = str(err.value)
    assert "differs from redis_password" in text
    assert "one-secret-xyz" not in text and "other-pw" not in text


@pytest.mark.parametrize(
    ("userinfo", "needle"),
    [("", "requires a password and none was given"), (":wrong-password-1234@", "refused")],
)
def test_missing_or_wrong_password_fails_at_start_in_one_line(
    locked: int, userinfo: str, needle: str
) -> None:
    t0 = time.monotonic()
    with pytest.raises(RedisAuthError) as err:
        make_queue(f"redis://{userinfo}127.0.0.1:{locked}/0")
    assert time.monotonic() - t0 < 2.0
    exc = err.value
    assert isinstance(exc, PermissionError)  # what the CLI prints as one line
    assert exc.filename == f"redis://127.0.0.1:{locked}/0"  # no credentials
    why = str(exc.strerror)
    assert needle in why and "REDIS_PASSWORD" in why
    assert "\n" not in why and "wrong-password" not in why


async def test_refusal_is_not_retried_by_a_running_queue(locked: int) -> None:
    """A queue made before the password changed (no start-up check) fails at once, not after
    reconnect_timeout_s of retries."""
    queue = RedisQueue(f"redis://:stale-password-000@127.0.0.1:{locked}/0", prefix="t:")
    t0 = time.monotonic()
    with pytest.raises(RedisAuthError):
        await queue.depth(0)
    assert time.monotonic() - t0 < 5.0 < queue.reconnect_timeout_s
    await queue.close()


def test_unreachable_redis_is_left_to_the_retries() -> None:
    """Redis that is not up yet (compose, a restarting pod) is no start-up error."""
    queue = make_queue(f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{free_port()}/0")
    assert isinstance(queue, RedisQueue)


@pytest.mark.server
@pytest.mark.parametrize("command", ["rollout-worker", "rollout-worker-flag", "rollout-http",
                                     "trainer"])  # fmt: skip
def test_cli_wrong_password_is_one_line_exit_2(locked: int, tmp_path: Path, command: str) -> None:
    """`vineppo serve rollout [--worker-only]` (password in VINEPPO_ROLLOUT_REDIS_PASSWORD,
    the URL in the variable or in --redis-url; without --worker-only the password in the
    --redis-url) and `vineppo train` (password in VINEPPO_TRAINER_REDIS_URL) with a wrong
    password: one line naming the URL, exit 2, no traceback, before any model is loaded."""
    url = f"redis://127.0.0.1:{locked}/0"
    if command == "rollout-worker-flag":
        args = ["serve", "rollout", "--worker-only", "--model", str(tmp_path), "--redis-url", url]
        env = {"VINEPPO_ROLLOUT_REDIS_PASSWORD": "not-the-password-42"}
    elif command == "rollout-http":
        args = [
            "serve",
            "rollout",
            "--model",
            str(tmp_path),
            "--port",
            str(free_port()),
            "--redis-url",
            f"redis://:not-the-password-42@127.0.0.1:{locked}/0",
        ]
        env = {}
    elif command == "trainer":
        args = [
            "train",
            "--preset",
            "tiny-cpu",
            "--output-dir",
            str(tmp_path / "run"),
            "--local-replicas",
            "0",
        ]
        env = {
            "VINEPPO_TRAINER_REDIS_URL": f"redis://:not-the-password-42@127.0.0.1:{locked}/0",
            "VINEPPO_TRAINER_REWARD_URL": "http://127.0.0.1:9",
        }
    else:
        args = ["serve", "rollout", "--worker-only", "--model", str(tmp_path)]
        env = {
            "VINEPPO_ROLLOUT_REDIS_URL": url,
            "VINEPPO_ROLLOUT_REDIS_PASSWORD": "not-the-password-42",
        }
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "not-the-password-42" not in out, out[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
    assert errors == [
        f"Error: {url}: Redis refused the password (invalid username-password pair or user is "
        "disabled.); set it in the URL (redis://:PASSWORD@host:port/db) or in "
        "VINEPPO_<SERVICE>_REDIS_PASSWORD"
    ], proc.stderr


# ---- TLS --------------------------------------------------------------------------------------


def make_tls_files(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl, 2048-bit RSA), and a
    second CA that signed nothing; keys ca, ca_key, crt, key, other_ca, other_key."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found on PATH")
    f = {k: d / f"{k}.pem" for k in ("ca", "ca_key", "crt", "key", "other_ca", "other_key")}

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    for ca, key, cn in (("ca", "ca_key", "test ca"), ("other_ca", "other_key", "other ca")):
        ssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            str(f[key]),
            "-out",
            str(f[ca]),
        )
    csr = d / "server.csr"
    ssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(f["key"]),
        "-out",
        str(csr),
    )
    ext = d / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(f["ca"]),
        "-CAkey",
        str(f["ca_key"]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(f["crt"]),
    )
    return f


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_locked(tls_files: dict[str, Path]) -> Iterator[int]:
    """redis-server speaking only TLS (as the chart runs it with redis.tls.enabled)."""
    with redis_server(
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        str(tls_files["crt"]),
        "--tls-key-file",
        str(tls_files["key"]),
        "--tls-ca-cert-file",
        str(tls_files["ca"]),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        PASSWORD,
    ) as port:
        yield port


async def test_tls_with_the_ca_in_the_url(tls_locked: int, tls_files: dict[str, Path]) -> None:
    """The URL shape the chart builds: rediss://...?ssl_ca_certs=<mounted ca.crt>."""
    settings = RolloutSettings(
        redis_url=f"rediss://127.0.0.1:{tls_locked}/0?ssl_ca_certs={tls_files['ca']}",
        redis_password=SecretStr(PASSWORD),
    )
    assert settings.redis_url is not None and settings.redis_url.endswith(str(tls_files["ca"]))
    await round_trip(settings.redis_url)


@pytest.mark.parametrize("ca", ["other_ca", None])
def test_tls_with_an_unknown_ca_fails_in_one_line(
    tls_locked: int, tls_files: dict[str, Path], ca: str | None
) -> None:
    query = f"?ssl_ca_certs={tls_files[ca]}" if ca else ""
    with pytest.raises(RedisAuthError) as err:
        make_queue(f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{tls_locked}/0{query}")
    assert "certificate was not accepted" in str(err.value.strerror)
    assert err.value.filename == f"rediss://127.0.0.1:{tls_locked}/0"


def test_plain_client_cannot_talk_to_the_tls_port(tls_locked: int) -> None:
    """TLS on means TLS only: a redis:// client gets nothing (the port speaks no plain text)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host="127.0.0.1",
        port=tls_locked,
        password=PASSWORD,
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    client.close()
