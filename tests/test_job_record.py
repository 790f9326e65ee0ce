"""A job's JSON record: decoded without pydantic's validation, it gives the validated job."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
import pytest

from bananas_core.job import Job, JobError, JobStatus, Priority

CREATED = datetime(2026, 12, 5, 12, 0, 0, 123000, tzinfo=timezone.utc)
LATER = datetime(2026, 12, 5, 12, 0, 7, 456000, tzinfo=timezone.utc)

JOBS = {
    "pending": {},
    "leased": {"status": "processing", "attempts": 2, "token": 7, "started_at": LATER, "worker": "w-1"},
    "completed": {"status": "completed", "finished_at": LATER, "result": {"rows": [1, 2.5, None]}},
    "dead": {
        "status": "dead",
        "retries": 3,
        "crashes": 1,
        "error": JobError(type="KeyError", message="'x'", traceback="Traceback ..."),
    },
    "scheduled": {"status": "scheduled", "priority": "low", "run_at": LATER, "queue": "reports"},
    "reporting progress": {"status": "processing", "progress": 0.25, "progress_message": "page 3"},
    "with a 20-digit integer": {"payload": {"big": 12345678901234567890123}},
    "with an integer progress": {"progress": 1},
}


def validated_job(**fields: Any) -> Job:
    values = {
        "id": "0123456789abcdef0123456789abcdef",
        "name": "send_report",
        "payload": {"to": "ops@example.com", "pages": [1, 2]},
        "priority": "high",
        "max_retries": 5,
        "timeout": 12.5,
        "created_at": CREATED,
        **fields,
    }
    return Job(**values)


@pytest.mark.parametrize("fields", JOBS.values(), ids=JOBS.keys())
def test_decoded_record_equals_validated_job(fields: dict[str, Any]) -> None:
    job = validated_job(**fields)

    decoded = Job.from_record(job.to_record())

    assert decoded == job
    for name in Job.model_fields:
        assert type(getattr(decoded, name)) is type(getattr(job, name)), name
    assert decoded.model_dump_json() == job.model_dump_json()
    assert Job.model_validate(decoded.model_dump()) == decoded


def test_decoded_job_behaves_as_model() -> None:
    decoded = Job.from_record(validated_job().to_record())

    changed = decoded.model_copy(update={"status": JobStatus.completed})

    assert changed.status is JobStatus.completed
    assert decoded.status is JobStatus.pending
    assert decoded.priority is Priority.high
    assert decoded.created_at.tzinfo is timezone.utc
    assert decoded.model_dump(exclude_unset=True).keys() >= {"id", "name", "payload", "token"}


def record_with(**changes: Any) -> str:
    record = orjson.loads(validated_job().to_record())
    for key, value in changes.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    return orjson.dumps(record).decode()


@pytest.mark.parametrize(
    "record",
    [
        "{not json",
        "[]",
        record_with(id=None),
        record_with(id=42),
        record_with(name=["send_report"]),
        record_with(priority="urgent"),
        record_with(status=["pending"]),
        record_with(payload="[1, 2]"),
        record_with(created_at="yesterday"),
        record_with(created_at=None),
        record_with(attempts="many"),
        record_with(worker=3),
    ],
    ids=[
        "not JSON",
        "not an object",
        "no id",
        "a numeric id",
        "a list for a name",
        "an unknown priority",
        "an unhashable status",
        "a list for a payload",
        "a text creation time",
        "no creation time",
        "text for attempts",
        "a number for a worker",
    ],
)
def test_invalid_record_raises(record: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        Job.from_record(record)
