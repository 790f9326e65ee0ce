"""The ``process_data`` payload and its validation.

Only the payload's shape is checked here. Each record is checked by the aggregation, which
counts and reports invalid records instead of failing the job.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from bananas_core import PermanentError
from bananas_core.registry import without_reserved_keys

FieldName = Annotated[str, StringConstraints(min_length=1)]

# How to fix each field, appended to the PermanentError that names it.
_FIXES = {
    "records": "give a non-empty list of JSON objects",
    "value": 'give the name of the numeric field to aggregate, such as "amount"',
    "group_by": "give the name of the field to group by, or leave group_by out",
    "required": "give a list of field names that each record must have, or leave required out",
}


class DataPayload(BaseModel):
    """A ``process_data`` payload whose shape is valid, and the schema of the handler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: list[Any] = Field(min_length=1)
    value: FieldName
    group_by: FieldName | None = None
    required: list[FieldName] = Field(default_factory=list)

    @field_validator("records", mode="before")
    @classmethod
    def _check_record_count(cls, records: Any, info: ValidationInfo) -> Any:
        # Checked before pydantic copies the list, so an oversized payload fails fast.
        # NOTE: the core validates payloads without a context, at submission and when the job
        # runs, so only parse_payload applies the limit here. The handler calls
        # check_record_limit on the model that the worker passes. Submission cannot check
        # it, because DATA_MAX_RECORDS is read in the worker, and the process that submits
        # may have another value.
        max_records = (info.context or {}).get("max_records")
        if isinstance(records, list) and max_records is not None and len(records) > max_records:
            raise ValueError(_too_many_records(len(records), max_records))
        return records


def parse_payload(payload: object, max_records: int) -> DataPayload:
    """Validate the shape of a ``process_data`` payload.

    Keys that start with ``_bananas`` carry plugins' metadata and are left out, as the
    core leaves them out of a handler's schema. Raises PermanentError that names each
    invalid, missing or unknown field and how to fix it.
    """
    if not isinstance(payload, dict):
        raise PermanentError(
            "invalid process_data payload: expected a JSON object with records and value, "
            f"got {type(payload).__name__}"
        )
    fields = without_reserved_keys(payload)
    try:
        return DataPayload.model_validate(fields, context={"max_records": max_records})
    except ValidationError as error:
        problems = [_describe(detail) for detail in error.errors()]
        raise PermanentError("invalid process_data payload:\n  " + "\n  ".join(problems)) from error


def check_record_limit(data: DataPayload, max_records: int) -> None:
    """Check a validated payload against the DATA_MAX_RECORDS limit ``max_records``.

    Raises the PermanentError that parse_payload raises for the same payload.
    """
    if len(data.records) > max_records:
        reason = _too_many_records(len(data.records), max_records)
        raise PermanentError(f"invalid process_data payload:\n  invalid field 'records': {reason}")


def _too_many_records(count: int, max_records: int) -> str:
    return (
        f"contains {count} records, more than DATA_MAX_RECORDS={max_records}: "
        "split the records over several jobs, or raise DATA_MAX_RECORDS"
    )


def _describe(detail: Any) -> str:
    location = detail["loc"]
    field = _field_path(location)
    top = str(location[0]) if location else ""

    if detail["type"] == "missing":
        return f"missing field {field!r}: {_FIXES.get(top, 'add it')}"
    if detail["type"] == "extra_forbidden":
        return f"unknown field {field!r}: remove it. Accepted fields: {', '.join(_FIXES)}"

    if detail["type"] == "value_error":
        # Raised by this module's validators, whose messages already include the fix.
        return f"invalid field {field!r}: {detail['ctx']['error']}"
    return f"invalid field {field!r}: {detail['msg']}. Fix: {_FIXES.get(top, 'correct the value')}"


def _field_path(location: tuple[Any, ...]) -> str:
    # ("required", 1) reads as "required[1]", the usual way to point at a list item.
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{part}"
        else:
            path = str(part)
    return path
