"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from bananas_core.backends.base import QueueCounts
from bananas_core.durations import DURATION_HELP, parse_duration
from bananas_core.job import Job, JobError, JobStatus, Priority

# A delay past this is almost surely a unit mistake, and a much larger one overflows datetime.
MAX_DELAY_SECONDS = 366 * 86400.0

_DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"

Delay = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(ge=0, le=MAX_DELAY_SECONDS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX_DELAY_SECONDS},
                {"type": "string", "pattern": _DURATION_PATTERN},
            ]
        }
    ),
]

Timeout = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(gt=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": _DURATION_PATTERN},
            ]
        }
    ),
]


class JobRequest(BaseModel):
    """A job to enqueue: the handler name, its payload and how it runs."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "send_email",
                    "payload": {"to": "ada@example.com", "subject": "Hi", "body": "Hello Ada."},
                },
                {
                    "name": "process_data",
                    "payload": {"records": [{"amount": 3}, {"amount": 5}], "value": "amount"},
                    "priority": "low",
                    "delay": "10m",
                    "max_retries": 5,
                    "timeout": "2m",
                },
            ]
        },
    )

    name: str = Field(
        min_length=1,
        max_length=128,
        description="Name of the handler that runs the job, registered by an installed plugin.",
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object passed to the handler.",
    )
    priority: Priority = Field(
        Priority.normal,
        description="Queue to wait in: a worker takes every high job before any normal one.",
    )
    delay: Delay | None = Field(
        None,
        description=f"Time to wait before the job may run: {DURATION_HELP}. Omit or 0 to run now.",
    )
    max_retries: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Retries after failed runs, 0 to 100. Defaults to the MAX_RETRIES setting.",
    )
    timeout: Timeout | None = Field(
        None,
        description=f"Time one run may take: {DURATION_HELP}. Defaults to the JOB_TIMEOUT setting.",
    )


class JobResponse(BaseModel):
    """A job as stored, with its progress through the queue."""

    id: str
    name: str
    queue: str
    priority: Priority
    status: JobStatus
    attempts: int = Field(description="Runs started, including one that is running now.")
    retries: int = Field(description="Retries scheduled after failed runs.")
    max_retries: int
    timeout: float = Field(description="Seconds one run may take.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_at: datetime | None = Field(description="When a scheduled job is due.")
    error: JobError | None = Field(description="The last error a run raised.")
    result: Any = Field(description="The handler's return value once the job completed.")
    payload: dict[str, Any]

    @classmethod
    def from_job(cls, job: Job) -> JobResponse:
        """Build the response body of ``job``, without worker-internal fields."""
        return cls.model_validate(job.model_dump(include=set(cls.model_fields)))


class QueueLengths(BaseModel):
    """Number of jobs in each place of one queue."""

    queue: str
    high: int
    normal: int
    low: int
    scheduled: int = Field(description="Delayed jobs and retries waiting for their run time.")
    processing: int = Field(description="Jobs leased by a worker and running.")
    completed: int = Field(description="Completed jobs kept until COMPLETED_TTL.")
    dead: int = Field(description="Jobs in the dead letter queue.")

    @classmethod
    def from_counts(cls, counts: QueueCounts) -> QueueLengths:
        """Build the lengths of one queue from the backend's counts."""
        return cls(
            queue=counts.queue,
            high=counts.high,
            normal=counts.normal,
            low=counts.low,
            scheduled=counts.scheduled,
            processing=counts.processing,
            completed=counts.completed,
            dead=counts.dead,
        )


class QueuesResponse(BaseModel):
    """Lengths of the queues this API serves."""

    queues: list[QueueLengths]


class StatusResponse(BaseModel):
    """Result of a health or readiness check."""

    status: str
