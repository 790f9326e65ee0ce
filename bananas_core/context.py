"""The context a handler receives as its optional second argument."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from bananas_core.job import Job


class JobLogger(logging.LoggerAdapter):
    """Logger adapter that prefixes messages with ``job ID:NAME`` and adds ``job_id`` to records."""

    def process(self, msg: object, kwargs: MutableMapping[str, Any]) -> tuple[object, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("job_id", self.extra["job_id"])  # type: ignore[index]
        kwargs["extra"] = extra
        return f"job {self.extra['job_id']}:{self.extra['job_name']}: {msg}", kwargs  # type: ignore[index]


def job_logger(job: Job) -> JobLogger:
    """Return the logger a handler gets for ``job``, named ``bananas.job.<handler name>``."""
    return JobLogger(logging.getLogger(f"bananas.job.{job.name}"), {"job_id": job.id, "job_name": job.name})


@dataclass(frozen=True)
class JobContext:
    """A running job as its handler sees it."""

    job: Job
    logger: logging.LoggerAdapter  # prefixes every message with the job id and handler name

    @property
    def job_id(self) -> str:
        """The id of the running job."""
        return self.job.id

    @property
    def attempt(self) -> int:
        """The number of this run, 1 for the first."""
        return self.job.attempts
