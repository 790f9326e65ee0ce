"""Settings from the environment, durations and the default retry schedule."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bananas_core.backends import create_backend
from bananas_core.durations import parse_duration
from bananas_core.errors import ConfigError
from bananas_core.job import Job, utc_now
from bananas_core.plugins import load_plugins
from bananas_core.retry import exponential_backoff
from bananas_core.settings import load_settings


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0), (45, 45.0), ("1.5", 1.5), (".5", 0.5), ("5.", 5.0), ("500ms", 0.5), ("30s", 30.0),
        ("5m", 300.0), (".5m", 30.0), ("1h", 3600.0), ("2d", 172800.0),
    ],
)
def test_duration_forms(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-3", "m5", "1.2.3", True, "inf", ".", "ms"])
def test_invalid_duration_names_value(text: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", [-1, "-3", " -2s", "-.5m"])
def test_negative_duration_says_so(text: object) -> None:
    with pytest.raises(ValueError, match="expected 0 or more seconds, not a negative"):
        parse_duration(text)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "API_PORT", "WORKER_CONCURRENCY", "JOB_TIMEOUT", "MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)

    settings = load_settings()

    assert settings.REDIS_URL == "redis://localhost:6379/0"
    assert settings.API_PORT == 8080
    assert settings.WORKER_CONCURRENCY == 5
    assert settings.JOB_TIMEOUT == 300.0
    assert settings.MAX_RETRIES == 3


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_TIMEOUT", "30s")
    monkeypatch.setenv("WORKER_CONCURRENCY", "12")
    monkeypatch.setenv("REDIS_URL", "unix:///run/redis.sock")

    settings = load_settings()

    assert settings.JOB_TIMEOUT == 30.0
    assert settings.WORKER_CONCURRENCY == 12
    assert settings.REDIS_URL == "unix:///run/redis.sock"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("JOB_TIMEOUT", "soon", "invalid JOB_TIMEOUT='soon': expected a number of seconds"),
        ("JOB_TIMEOUT", "0", "invalid JOB_TIMEOUT='0'"),
        ("API_PORT", "70000", "invalid API_PORT='70000': expected a whole number from 1 to 65535"),
        ("WORKER_CONCURRENCY", "zero", "invalid WORKER_CONCURRENCY='zero'"),
        ("MAX_RETRIES", "-1", "invalid MAX_RETRIES='-1'"),
        ("REDIS_URL", "localhost:6379", "invalid REDIS_URL='localhost:6379': expected a URL such as redis://"),
    ],
)
def test_invalid_setting_names_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert str(raised.value).startswith(expected)


def test_invalid_setting_exits_2_with_one_line() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", "from bananas_core.cli import main; main(['worker'])"],
        env={"JOB_TIMEOUT": "forever", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert "JOB_TIMEOUT='forever'" in completed.stderr


@pytest.mark.parametrize(("retries", "base"), [(0, 2.0), (1, 4.0), (2, 8.0)])
def test_default_backoff_schedule_with_jitter(retries: int, base: float) -> None:
    job = Job(id="j", name="n", retries=retries, max_retries=3, created_at=utc_now())

    delays = [exponential_backoff(job) for _ in range(200)]

    assert all(base <= delay <= base * 1.1 for delay in delays)
    assert len(set(delays)) > 100


def test_default_backoff_gives_up_after_max_retries() -> None:
    job = Job(id="j", name="n", retries=3, max_retries=3, created_at=utc_now())

    assert exponential_backoff(job) is False


def test_invalid_url_error_hides_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "user:hunter2@cache:6379/0")

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert "hunter2" not in str(raised.value)
    assert "***@cache:6379/0" in str(raised.value)


def test_url_scheme_without_backend_is_config_error() -> None:
    settings = load_settings(REDIS_URL="http://cache:6379")

    with pytest.raises(ConfigError, match="no installed plugin provides a backend for this scheme"):
        create_backend(load_plugins().manager, settings)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:99999/0", "Port out of range"),
        ("redis://127.0.0.1:6379/0x", "database '0x' is not a number"),
        ("redis://127.0.0.1:6379/0?socket_timeout=abc", "invalid REDIS_URL"),
    ],
)
def test_malformed_redis_url_is_config_error(url: str, expected: str) -> None:
    settings = load_settings(REDIS_URL=url)

    with pytest.raises(ConfigError, match=expected):
        create_backend(load_plugins().manager, settings)


def test_queue_name_is_not_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE", "@x")

    with pytest.raises(ConfigError, match="invalid QUEUE='@x'"):
        load_settings()
