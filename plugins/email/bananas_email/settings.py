"""SMTP settings read from ``SMTP_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bananas_core import PermanentError
from bananas_email.addresses import parse_address

# Accepted values of each variable, shown in the error that names an invalid one.
_ACCEPTED_VALUES = {
    "SMTP_HOST": "a host name or IP address",
    "SMTP_PORT": "a whole number from 1 to 65535",
    "SMTP_USERNAME": "a user name, set together with SMTP_PASSWORD",
    "SMTP_PASSWORD": "a password, set together with SMTP_USERNAME",
    "SMTP_STARTTLS": "true or false, and not true together with SMTP_SSL",
    "SMTP_SSL": "true or false, and not true together with SMTP_STARTTLS",
    "SMTP_FROM": "one email address such as bananas@example.com or Bananas <bananas@example.com>",
    "SMTP_TIMEOUT": "a number of seconds greater than zero",
}

_COMBINATION_ERROR = "smtp_settings_combination"


class SmtpSettings(BaseSettings):
    """Connection and sender settings of the SMTP server that ``send_email`` uses."""

    # Empty variables count as unset, so SMTP_PASSWORD= turns login off instead of
    # logging in with an empty password. Hiding inputs keeps SMTP_PASSWORD out of the
    # ValidationError text, which a failed job's stored traceback would contain.
    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", env_ignore_empty=True, hide_input_in_errors=True
    )

    SMTP_HOST: str = Field("localhost", min_length=1)
    SMTP_PORT: int = Field(25, ge=1, le=65535)
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: SecretStr | None = None  # SecretStr keeps the password out of repr and logs
    SMTP_STARTTLS: bool = False
    SMTP_SSL: bool = False  # implicit TLS from the first byte, usually on port 465
    SMTP_FROM: str = "bananas@localhost"
    SMTP_TIMEOUT: float = Field(30.0, gt=0, allow_inf_nan=False)

    @field_validator("SMTP_FROM")
    @classmethod
    def _check_sender(cls, value: str) -> str:
        return str(parse_address(value))

    @model_validator(mode="after")
    def _check_combinations(self) -> SmtpSettings:
        if self.SMTP_STARTTLS and self.SMTP_SSL:
            _raise_combination("SMTP_STARTTLS", "SMTP_STARTTLS and SMTP_SSL are both true")
        if self.SMTP_USERNAME is not None and self.SMTP_PASSWORD is None:
            _raise_combination("SMTP_PASSWORD", "SMTP_USERNAME is set but SMTP_PASSWORD is not")
        if self.SMTP_PASSWORD is not None and self.SMTP_USERNAME is None:
            _raise_combination("SMTP_USERNAME", "SMTP_PASSWORD is set but SMTP_USERNAME is not")
        return self


def load_smtp_settings() -> SmtpSettings:
    """Read the SMTP settings from the environment.

    Raises PermanentError naming the first invalid variable and what it accepts, because a
    retry in the same worker process reads the same environment and fails the same way.
    The message shows the invalid value, except for SMTP_PASSWORD.
    """
    try:
        return SmtpSettings()
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == _COMBINATION_ERROR:
            name = first["ctx"]["variable"]
            problem = first["msg"]
        else:
            name = str(first["loc"][0])
            displayed_value = "(hidden)" if name == "SMTP_PASSWORD" else repr(first.get("input"))
            problem = f"{name}={displayed_value}"
        accepted = _ACCEPTED_VALUES.get(name, "see the settings table in the bananas-email README")
        raise PermanentError(
            f"invalid SMTP settings: {problem}. {name} must be {accepted}"
        ) from error


def _raise_combination(variable: str, message: str) -> None:
    # A model validator's error has no field location, so the variable travels in ctx.
    raise PydanticCustomError(_COMBINATION_ERROR, message, {"variable": variable})
