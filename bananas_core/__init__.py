"""bananas: a Redis job queue whose handlers come from pip-installable plugins."""

from bananas_core.context import JobContext
from bananas_core.errors import (
    BackendError,
    BananasError,
    ConfigError,
    InvalidPayload,
    JobConflict,
    JobNotFound,
    PayloadTooLarge,
    PermanentError,
    PluginError,
)
from bananas_core.hookspecs import hookspec
from bananas_core.job import Job, JobError, JobStatus, Priority
from bananas_core.plugins import hookimpl
from bananas_core.registry import Handler, HandlerRegistry
from bananas_core.settings import Settings, load_settings

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Only the scheduler and the API need periodic jobs; a worker is spared their imports
    # (cron parsing and time zones).
    if name == "Schedule":
        from bananas_core.periodic import Schedule

        return Schedule
    raise AttributeError(f"module 'bananas_core' has no attribute {name!r}")

__all__ = [
    "BackendError",
    "BananasError",
    "ConfigError",
    "Handler",
    "HandlerRegistry",
    "InvalidPayload",
    "Job",
    "JobConflict",
    "JobContext",
    "JobError",
    "JobNotFound",
    "JobStatus",
    "PayloadTooLarge",
    "PermanentError",
    "PluginError",
    "Priority",
    "Schedule",
    "Settings",
    "hookimpl",
    "hookspec",
    "load_settings",
]

