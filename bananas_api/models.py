"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from bananas_core.backends.base import QueueCounts, WorkerInfo
from bananas_core.client import MIN_TIMEOUT_SECONDS
from bananas_core.durations import DURATION_HELP, parse_duration
from bananas_core.job import Job, JobError, JobStatus, Priority, utc_now
from bananas_core.periodic import ScheduleState
from bananas_core.registry import HANDLER_NAME

# A delay past this is almost surely a unit mistake, and a much larger one overflows datetime.
MAX_DELAY_SECONDS = 366 * 86400.0
# A run time limit past this is a unit mistake too, and a huge one overflows the record's ms.
MAX_TIMEOUT_SECONDS = 7 * 86400.0

# The rules of bananas_core.client, as JSON schema patterns.
QUEUE_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
UNIQUE_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"

DURATION_PATTERN = r"^\s*(\d+(\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$"

Delay = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(ge=0, le=MAX_DELAY_SECONDS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX_DELAY_SECONDS},
                {"type": "string", "pattern": DURATION_PATTERN},
            ]
        }
    ),
]

Timeout = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(ge=MIN_TIMEOUT_SECONDS, le=MAX_TIMEOUT_SECONDS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": MIN_TIMEOUT_SECONDS, "maximum": MAX_TIMEOUT_SECONDS},
                {"type": "string", "pattern": DURATION_PATTERN},
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
                {
                    "name": "send_email",
                    "payload": {"to": "ada@example.com", "subject": "Invoice", "body": "Attached."},
                    "queue": "email",
                    "priority": "high",
                    "unique_key": "invoice-2030-01-ada",
                },
            ]
        },
    )

    name: str = Field(
        pattern=HANDLER_NAME.pattern,
        description="Name of the handler that runs the job, registered by an installed plugin.",
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object passed to the handler.",
    )
    priority: Priority | None = Field(
        None,
        description=(
            "Queue to wait in: a worker takes every high job before any normal one. Defaults to "
            "the handler's registered priority, else normal."
        ),
    )
    delay: Delay | None = Field(
        None,
        description=f"Time to wait before the job may run: {DURATION_HELP}. Omit or 0 to run now.",
    )
    # Strict, so that true or 2.5 is an error rather than 1 or 2.
    max_retries: StrictInt | None = Field(
        None,
        ge=0,
        le=100,
        description="Retries after failed runs, 0 to 100. Defaults to the MAX_RETRIES setting.",
    )
    timeout: Timeout | None = Field(
        None,
        description=f"Time one run may take: {DURATION_HELP}. Defaults to the JOB_TIMEOUT setting.",
    )
    queue: str | None = Field(
        None,
        pattern=QUEUE_PATTERN,
        description="Named queue, served by the workers started with that QUEUE. Defaults to QUEUE.",
    )
    run_at: datetime | None = Field(
        None,
        description="Time the job may run, ISO 8601; without a time zone it is UTC. "
        "Instead of delay. A time in the past runs the job now.",
    )
    unique_key: str | None = Field(
        None,
        pattern=UNIQUE_KEY_PATTERN,
        description="Idempotency key: a repeat with the same key within IDEMPOTENCY_WINDOW "
        "returns the first job instead of creating one. The Idempotency-Key header sets it too.",
    )

    @field_validator("run_at")
    @classmethod
    def _check_run_at(cls, run_at: datetime | None) -> datetime | None:
        if run_at is None:
            return None
        if run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=timezone.utc)
        if (run_at - utc_now()).total_seconds() > MAX_DELAY_SECONDS:
            raise ValueError(
                f"run_at {run_at.isoformat()} is more than {MAX_DELAY_SECONDS / 86400:g} days "
                "ahead; pick an earlier time."
            )
        return run_at

    @model_validator(mode="after")
    def _check_schedule(self) -> JobRequest:
        if self.run_at is not None and self.delay:
            raise ValueError("Set delay or run_at, not both.")
        return self


class BatchRequest(BaseModel):
    """Jobs to enqueue together: all are stored, or none is."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "jobs": [
                        {"name": "send_email", "payload": {"to": "ada@example.com", "subject": "Hi", "body": "Hello."}},
                        {"name": "send_email", "payload": {"to": "alan@example.com", "subject": "Hi", "body": "Hello."}, "unique_key": "welcome-alan"},
                    ]
                }
            ]
        },
    )

    jobs: list[JobRequest] = Field(
        min_length=1,
        description="The jobs, at most MAX_BATCH_JOBS, all in the same queue.",
    )


class SubmittedJob(BaseModel):
    """One job of a batch, and whether the batch created it."""

    created: bool = Field(description="False when an idempotency key returned an earlier job.")
    job: JobResponse


class BatchResponse(BaseModel):
    """The jobs of a batch, in the order of the request."""

    jobs: list[SubmittedJob]


class JobListResponse(BaseModel):
    """One page of jobs, in no set order, and the cursor of the next page."""

    jobs: list[JobResponse]
    next_cursor: str | None = Field(
        description="Pass as cursor to get the next page; null after the last page."
    )


class CancelResponse(BaseModel):
    """The result of a cancellation."""

    outcome: Literal["cancelled", "requested"] = Field(
        description="cancelled: the job will never run. requested: the job is running, and its "
        "worker was asked to stop it."
    )
    job: JobResponse


class CountResponse(BaseModel):
    """How many jobs an operation on the dead letter queue changed."""

    count: int


class WorkerResponse(BaseModel):
    """A worker with a live registration."""

    id: str
    queue: str
    handlers: list[str]
    concurrency: int
    running: int = Field(description="Jobs running at the last heartbeat.")
    host: str
    pid: int
    started_at: datetime
    last_heartbeat: datetime

    @classmethod
    def from_info(cls, info: WorkerInfo) -> WorkerResponse:
        """Build the response body of one worker registration."""
        return cls(
            id=info.id,
            queue=info.queue,
            handlers=info.handlers,
            concurrency=info.concurrency,
            running=info.running,
            host=info.host,
            pid=info.pid,
            started_at=datetime.fromtimestamp(info.started_at / 1000, timezone.utc),
            last_heartbeat=datetime.fromtimestamp(info.heartbeat_at / 1000, timezone.utc),
        )


class WorkersResponse(BaseModel):
    """The workers with a live registration, most recent heartbeat first."""

    workers: list[WorkerResponse]


class JobResponse(BaseModel):
    """A job as stored, with its progress through the queue."""

    id: str
    name: str
    queue: str
    priority: Priority
    status: JobStatus
    attempts: int = Field(description="Runs started, including one that is running now.")
    retries: int = Field(description="Retries scheduled after failed runs.")
    crashes: int = Field(
        0, description="Runs lost because their worker died or lost its lease; see POISON_THRESHOLD."
    )
    max_retries: int
    timeout: float = Field(description="Seconds one run may take.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_at: datetime | None = Field(description="When a scheduled job is due.")
    error: JobError | None = Field(description="The last error a run raised.")
    result: Any = Field(description="The handler's return value once the job completed.")
    payload: dict[str, Any]
    progress: float | None = Field(
        None, ge=0, le=1, description="The last progress the running handler reported, from 0 to 1."
    )
    progress_message: str | None = Field(None, description="The message of the last progress report.")
    cancel_requested_at: datetime | None = Field(
        None, description="When cancellation of this running job was requested."
    )

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
    cancelled: int = Field(0, description="Cancelled jobs kept until COMPLETED_TTL.")

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
            cancelled=counts.cancelled,
        )


class QueuesResponse(BaseModel):
    """Lengths of every queue in use, and of the API's QUEUE even when empty."""

    queues: list[QueueLengths]


class StatusResponse(BaseModel):
    """Result of a health or readiness check."""

    status: str


class ScheduleResponse(BaseModel):
    """A periodic schedule with its state."""

    name: str
    cron: str = Field(description="Cron expression: five fields, or six with seconds first.")
    timezone: str = Field(description="IANA time zone the expression is read in.")
    job: str = Field(description="Handler name of the jobs it enqueues.")
    queue: str | None
    catch_up: bool = Field(description="Whether ticks missed while no scheduler ran are run once.")
    paused: bool
    last_tick: datetime | None = Field(description="The last tick enqueued, null before the first.")
    next_tick: datetime

    @classmethod
    def from_state(cls, state: ScheduleState) -> ScheduleResponse:
        """Build the response body of one schedule's state."""
        return cls.model_validate(dataclasses.asdict(state))


class ScheduleListResponse(BaseModel):
    """The periodic schedules that plugins and the PERIODIC_JOBS setting declare."""

    schedules: list[ScheduleResponse]
