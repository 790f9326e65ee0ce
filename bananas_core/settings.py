"""Settings read from the environment by every bananas service."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bananas_core.durations import DURATION_HELP, parse_duration
from bananas_core.errors import ConfigError

Duration = Annotated[float, BeforeValidator(parse_duration)]

# The accepted values of each variable, quoted by the one-line start-up error.
_ACCEPTS = {
    "REDIS_URL": "a URL such as redis://localhost:6379/0 (schemes: redis, rediss, unix, memory, or one a plugin adds)",
    "API_HOST": "an IP address or host name to bind",
    "API_PORT": "a whole number from 1 to 65535",
    "WORKER_CONCURRENCY": "a whole number from 1 to 10000",
    "WORKER_PREFETCH": "a whole number from 0 to 10000",
    "JOB_TIMEOUT": DURATION_HELP + ", at least 1ms",
    "MAX_RETRIES": "a whole number from 0 to 100",
    "LEASE_TIMEOUT": DURATION_HELP + ", at least 1s",
    "POISON_THRESHOLD": "a whole number from 1 to 1000",
    "SHUTDOWN_GRACE": DURATION_HELP,
    "SCHEDULER_INTERVAL": DURATION_HELP + ", greater than zero",
    "COMPLETED_TTL": DURATION_HELP,
    "DEAD_TTL": DURATION_HELP,
    "MAX_REQUEST_BYTES": "a whole number of bytes, at least 1024",
    "MAX_PAYLOAD_BYTES": "a whole number of bytes, at least 2",
    "KEY_PREFIX": "a non-empty string without spaces, braces or quotes",
    "QUEUE": "a name of letters, digits, '-', '_' or '.'",
    "PLUGINS": "a comma-separated list of importable module names",
    "LOG_LEVEL": "one of DEBUG, INFO, WARNING, ERROR",
    "API_KEYS": (
        "a comma-separated list of sha256:HEX or sha256:HEX:SCOPES entries, where HEX is the "
        "64-digit SHA-256 of a key and SCOPES is read, write or read+write"
    ),
    "API_INSECURE": "true or false",
    "RATE_LIMIT": "a number of requests per second per API key, 0 to turn limiting off",
    "RATE_LIMIT_BURST": "a whole number from 1 to 100000",
    "MAX_BATCH_JOBS": "a whole number from 1 to 10000",
    "IDEMPOTENCY_WINDOW": DURATION_HELP + ", at least 1s",
    "WAIT_TIMEOUT_MAX": DURATION_HELP + ", from 1s to 1h",
    "PLUGINS_ALLOW": "a comma-separated list of entry-point names or distribution names",
    "PLUGINS_BLOCK": "a comma-separated list of entry-point names, distribution names or PLUGINS modules",
    "TRACE_HOOKS": "true or false",
    "PERIODIC_JOBS": "a JSON list of schedule objects, as docs/plugins.md describes",
}


_API_KEY_ENTRY = r"sha256:[0-9a-fA-F]{64}(:(read|write|read\+write|write\+read))?"
_API_KEYS_PATTERN = rf"^\s*({_API_KEY_ENTRY}\s*(,\s*{_API_KEY_ENTRY}\s*)*)?$"


class Settings(BaseSettings):
    """Configuration of the API, worker and scheduler, read from environment variables."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    # Any scheme passes here: the bananas_backend hook decides which schemes a backend serves.
    REDIS_URL: str = Field("redis://localhost:6379/0", pattern=r"^[A-Za-z][A-Za-z0-9+.\-]*://")
    API_HOST: str = Field("127.0.0.1", min_length=1)
    API_PORT: int = Field(8080, ge=1, le=65535)
    WORKER_CONCURRENCY: int = Field(5, ge=1, le=10000)
    # Jobs a worker leases beyond its free slots, so that it runs them while its next lease
    # is on its way. 0 leases only for free slots, which spreads long jobs best across workers.
    WORKER_PREFETCH: int = Field(0, ge=0, le=10000)
    # Records keep whole milliseconds, so a shorter timeout would be stored as 0.
    JOB_TIMEOUT: Duration = Field(300.0, ge=0.001)
    MAX_RETRIES: int = Field(3, ge=0, le=100)
    # A running job's lease: the worker renews it every third of this, and the scheduler
    # returns the job to its queue when the lease runs out (the worker died).
    LEASE_TIMEOUT: Duration = Field(30.0, ge=1)
    # Runs of one job lost to a dead worker before the job is dead-lettered as poison.
    POISON_THRESHOLD: int = Field(3, ge=1, le=1000)
    SHUTDOWN_GRACE: Duration = 10.0
    SCHEDULER_INTERVAL: Duration = Field(1.0, gt=0)
    COMPLETED_TTL: Duration = 86400.0
    DEAD_TTL: Duration = 7 * 86400.0
    MAX_REQUEST_BYTES: int = Field(1024 * 1024, ge=1024)
    # The largest payload one job may carry, as UTF-8 JSON: every record lives in Redis's
    # memory until it is purged. 2 bytes is the empty object.
    MAX_PAYLOAD_BYTES: int = Field(1024 * 1024, ge=2)
    KEY_PREFIX: str = Field("bananas", pattern=r"^[^\s{}'\"]+$")
    QUEUE: str = Field("default", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    PLUGINS: str = Field("", pattern=r"^[A-Za-z0-9_., ]*$")
    LOG_LEVEL: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # Bearer keys of the API, given as hashes so the settings never contain a usable key.
    API_KEYS: str = Field("", pattern=_API_KEYS_PATTERN)
    # Serve the API without keys on an address other than loopback. Off, the API refuses.
    API_INSECURE: bool = False
    # Requests per second each API key (or client address, without keys) may make on average,
    # and how many it may make at once after being idle.
    RATE_LIMIT: float = Field(0.0, ge=0)
    RATE_LIMIT_BURST: int = Field(20, ge=1, le=100_000)
    # Jobs one POST /jobs/batch may carry; a batch is one Lua script call on Redis.
    MAX_BATCH_JOBS: int = Field(100, ge=1, le=10_000)
    # How long an idempotency key returns the job it first created.
    IDEMPOTENCY_WINDOW: Duration = Field(86400.0, ge=1)
    # Maximum time one wait request may block, so a client cannot hold a connection forever.
    WAIT_TIMEOUT_MAX: Duration = Field(60.0, ge=1, le=3600)
    # Entry-point plugins to load: when set, only those named here (by entry-point name or
    # distribution). Blocked plugins are never imported, also when the allow list names them.
    PLUGINS_ALLOW: str = Field("", pattern=r"^[A-Za-z0-9_.\-, ]*$")
    PLUGINS_BLOCK: str = Field("", pattern=r"^[A-Za-z0-9_.\-, ]*$")
    # Log every hook call, with its arguments and result, to the bananas.hooks logger.
    TRACE_HOOKS: bool = False
    # Schedules besides those of the bananas_periodic_jobs hook, checked by bananas_core.periodic.
    PERIODIC_JOBS: str = ""

    @property
    def api_keys(self) -> list[tuple[str, frozenset[str]]]:
        """The SHA-256 hex digests of the API keys in API_KEYS, each with its scopes."""
        keys = []
        for entry in self.API_KEYS.split(","):
            entry = entry.strip()
            if not entry:
                continue
            _, digest, *scopes = entry.split(":")
            keys.append((digest.lower(), frozenset((scopes[0] if scopes else "read+write").split("+"))))
        return keys

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
        if name == "REDIS_URL" and isinstance(value, str):
            value = redact_url(value)
        if name == "API_KEYS":
            # A raw key pasted in place of its hash must not reach the logs.
            value = "(hidden)"
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
