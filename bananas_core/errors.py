"""Exceptions raised by bananas.

    BananasError
    ├── ConfigError            a setting has an invalid value
    ├── PluginError            a plugin failed to load or conflicts with another
    ├── BackendError           the backend (Redis) failed or is unreachable
    ├── JobNotFound            no job has the requested id
    ├── JobConflict            the job's state does not allow the operation
    ├── ScheduleNotFound       no periodic schedule has the requested name
    └── PermanentError         raised by a handler: fail the job now, without retries
        └── InvalidPayload     a payload does not match its handler's schema

redis-py errors are translated into BackendError at the backend boundary, so callers
catch one type whatever the backend is.
"""

from __future__ import annotations


class BananasError(Exception):
    """Base class of every error that bananas raises on purpose."""


class ConfigError(BananasError):
    """Raised when a setting has an invalid value. The message names the variable and the fix."""


class PluginError(BananasError):
    """Raised when a plugin fails to import, or two plugins register the same handler name."""


class BackendError(BananasError):
    """Raised when the backend cannot complete an operation, for example Redis is unreachable."""


class JobNotFound(BananasError):
    """Raised when no job has the requested id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class PermanentError(BananasError):
    """Raised by a handler to fail its job at once: no retry, straight to the dead letter queue.

    Use it for errors that another attempt cannot fix, such as an invalid payload.
    """


class JobConflict(BananasError):
    """Raised when a job's state does not allow the operation, such as cancelling a finished job.

    ``job`` is the job as stored when the operation was rejected.
    """

    def __init__(self, message: str, job: object) -> None:
        super().__init__(message)
        self.job = job


class InvalidPayload(PermanentError):
    """Raised when a payload does not match the pydantic schema its handler registered.

    ``errors`` lists one ``{"field": "to[0].name", "message": "...", "input": ...}`` per
    problem, for the API's 422 response. A PermanentError, because the same payload fails
    the same way on every attempt.
    """

    def __init__(self, message: str, errors: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.errors = errors


class PayloadTooLarge(BananasError):
    """Raised when a job's payload, as JSON, is larger than MAX_PAYLOAD_BYTES allows."""


class ScheduleNotFound(BananasError):
    """Raised when no periodic schedule has the requested name."""
