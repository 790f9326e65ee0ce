"""The ``send_email`` payload and its validation."""

from __future__ import annotations

from email.headerregistry import Address
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from bananas_core import PermanentError
from bananas_core.registry import without_reserved_keys
from bananas_email.addresses import breaks_header, format_address, parse_address

# RFC 5321 section 4.5.3.1.8 requires servers to accept at least 100 recipients per
# message, so a larger message may be cut short by a compliant server.
MAX_RECIPIENTS = 100

# The JSON form is what the core stores for a submitted job and parses again when it runs.
EmailAddress = Annotated[
    Address,
    BeforeValidator(parse_address),
    PlainSerializer(format_address, return_type=str, when_used="json"),
]

# How to fix each field, appended to the PermanentError that names it.
_FIXES = {
    "to": "give one address such as 'ada@example.com' or a list of them",
    "subject": "give a non-empty string without line breaks",
    "body": "give the plain-text body as a string",
    "cc": "give one address such as 'ada@example.com' or a list of them, or leave cc out",
    "reply_to": "give one address such as 'ada@example.com' or a list of them, "
    "or leave reply_to out",
    "from": "give one address such as 'Reports <reports@example.com>', "
    "or leave from out to use SMTP_FROM",
}


class EmailPayload(BaseModel):
    """A validated ``send_email`` payload, and the schema of the handler."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    to: list[EmailAddress] = Field(min_length=1)
    subject: str = Field(min_length=1)
    body: str
    cc: list[EmailAddress] = Field(default_factory=list)
    reply_to: list[EmailAddress] = Field(default_factory=list)
    sender: EmailAddress | None = Field(None, alias="from")  # 'from' is a Python keyword

    @field_validator("to", "cc", "reply_to", mode="before")
    @classmethod
    def _wrap_single_address(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        if any(breaks_header(character) for character in value):
            raise ValueError("contains a line break or another control character")
        if not value.strip():
            raise ValueError("contains only whitespace")
        return value

    @model_validator(mode="after")
    def _check_recipient_count(self) -> EmailPayload:
        count = len(self.recipients)
        if count > MAX_RECIPIENTS:
            raise ValueError(
                f"to and cc name {count} different recipients, more than {MAX_RECIPIENTS}: "
                "split them over several jobs"
            )
        return self

    @property
    def recipients(self) -> list[str]:
        """The envelope recipients: the addresses in to and cc, without duplicates, in order."""
        unique: dict[str, None] = {}
        for address in [*self.to, *self.cc]:
            unique.setdefault(address.addr_spec, None)
        return list(unique)


def parse_payload(payload: object) -> EmailPayload:
    """Validate a ``send_email`` payload.

    Keys that start with ``_bananas`` carry plugins' metadata and are left out, as the
    core leaves them out of a handler's schema. Raises PermanentError that names each
    invalid, missing or unknown field and how to fix it.
    """
    if not isinstance(payload, dict):
        raise PermanentError(
            f"invalid send_email payload: expected a JSON object with to, subject and body, "
            f"got {type(payload).__name__}"
        )
    fields = without_reserved_keys(payload)
    try:
        return EmailPayload.model_validate(fields)
    except ValidationError as error:
        problems = [_describe(detail) for detail in error.errors()]
        raise PermanentError("invalid send_email payload:\n  " + "\n  ".join(problems)) from error


def _describe(detail: Any) -> str:
    location = detail["loc"]
    field = _field_path(location)
    top = str(location[0]) if location else ""

    if detail["type"] == "missing":
        return f"missing field {field!r}: {_FIXES.get(top, 'add it')}"
    if detail["type"] == "extra_forbidden":
        accepted = ", ".join(_FIXES)
        return f"unknown field {field!r}: remove it. Accepted fields: {accepted}"

    if detail["type"] == "value_error":
        reason = str(detail["ctx"]["error"])
    else:
        reason = detail["msg"]
    if not location:
        return reason
    return f"invalid field {field!r}: {reason}. Fix: {_FIXES.get(top, 'correct the value')}"


def _field_path(location: tuple[Any, ...]) -> str:
    # ("to", 1) reads as "to[1]", the usual way to point at a list item.
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{part}"
        else:
            path = str(part)
    return path
