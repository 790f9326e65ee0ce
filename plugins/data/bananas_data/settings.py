"""Settings of the data plugin, read from ``DATA_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bananas_core import PermanentError


class DataSettings(BaseSettings):
    """Limits that ``process_data`` applies to each payload."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", env_ignore_empty=True)

    # The payload is held in memory with every value copied for the median, so this bounds
    # one job's memory. Payloads sent through the HTTP API are also capped by
    # MAX_REQUEST_BYTES (1 MiB by default), which is usually reached first.
    DATA_MAX_RECORDS: int = Field(100_000, ge=1)


def load_data_settings() -> DataSettings:
    """Read the settings from the environment.

    Raises PermanentError naming the invalid variable, because a retry in the same worker
    process reads the same environment and fails the same way.
    """
    try:
        return DataSettings()
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0])
        raise PermanentError(
            f"invalid setting {name}={first.get('input')!r}: expected a whole number of "
            "records, at least 1"
        ) from error
