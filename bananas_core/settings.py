"""Settings read from the environment by every bananas service."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bananas_core.durations import DURATION_HELP, parse_duration
from bananas_core.errors import ConfigError

Duration = Annotated[float, BeforeValidator(parse_duration)]

# What each variable accepts, for the one-line start-up error.
_ACCEPTS = {
    "REDIS_URL": "a URL starting with redis://, rediss://, unix:// or memory://",
    "API_HOST": "an IP address or host name to bind",
    "API_PORT": "a whole number from 1 to 65535",
    "WORKER_CONCURRENCY": "a whole number from 1 to 10000",
    "JOB_TIMEOUT": DURATION_HELP + ", greater than zero",
    "MAX_RETRIES": "a whole number from 0 to 100",
    "LEASE_TIMEOUT": DURATION_HELP + ", at least 1s",
    "SHUTDOWN_GRACE": DURATION_HELP,
    "SCHEDULER_INTERVAL": DURATION_HELP + ", greater than zero",
    "COMPLETED_TTL": DURATION_HELP,
    "DEAD_TTL": DURATION_HELP,
    "MAX_REQUEST_BYTES": "a whole number of bytes, at least 1024",
    "KEY_PREFIX": "a non-empty string without spaces, braces or quotes",
    "QUEUE": "a name of letters, digits, '-', '_' or '.'",
    "PLUGINS": "a comma-separated list of importable module names",
    "LOG_LEVEL": "one of DEBUG, INFO, WARNING, ERROR",
}


class Settings(BaseSettings):
    """Configuration of the API, worker and scheduler, read from environment variables."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    REDIS_URL: str = Field("redis://localhost:6379/0", pattern=r"^(redis|rediss|unix|memory)://")
    API_HOST: str = Field("127.0.0.1", min_length=1)
    API_PORT: int = Field(8080, ge=1, le=65535)
    WORKER_CONCURRENCY: int = Field(5, ge=1, le=10000)
    JOB_TIMEOUT: Duration = Field(300.0, gt=0)
    MAX_RETRIES: int = Field(3, ge=0, le=100)
    # A running job's lease: the worker renews it every third of this, and the scheduler
    # returns the job to its queue when the lease runs out (the worker died).
    LEASE_TIMEOUT: Duration = Field(30.0, ge=1)
    SHUTDOWN_GRACE: Duration = 10.0
    SCHEDULER_INTERVAL: Duration = Field(1.0, gt=0)
    COMPLETED_TTL: Duration = 86400.0
    DEAD_TTL: Duration = 7 * 86400.0
    MAX_REQUEST_BYTES: int = Field(1024 * 1024, ge=1024)
    KEY_PREFIX: str = Field("bananas", pattern=r"^[^\s{}'\"]+$")
    QUEUE: str = Field("default", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    PLUGINS: str = Field("", pattern=r"^[A-Za-z0-9_., ]*$")
    LOG_LEVEL: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @property
    def plugin_modules(self) -> list[str]:
        """Module names from PLUGINS, loaded as plugins besides the entry points."""
        return [name.strip() for name in self.PLUGINS.split(",") if name.strip()]


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, with keyword overrides.

    Raises ConfigError with one line naming the variable, its value and what is accepted.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        # Show the text the user wrote, not the value after parsing (``0.0`` for ``0``).
        value = overrides.get(name, os.environ.get(name, first.get("input")))
        if isinstance(value, str) and "@" in value:
            value = redact_url(value)
        accepts = _ACCEPTS.get(name, "see the configuration table in the README")
        raise ConfigError(f"invalid {name}={value!r}: expected {accepts}") from error


def redact_url(url: str) -> str:
    """Return ``url`` with its user and password replaced by ``***``, for logs and errors."""
    if "@" not in url:
        return url
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "***@" + url.rsplit("@", 1)[1]
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
