"""The context a handler receives as its optional second argument."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bananas_core.job import Job


@dataclass(frozen=True)
class JobContext:
    """A running job as its handler sees it."""

    job: Job
    logger: logging.Logger  # a logger whose records carry the job id

    @property
    def job_id(self) -> str:
        """The id of the running job."""
        return self.job.id

    @property
    def attempt(self) -> int:
        """The number of this run, 1 for the first."""
        return self.job.attempts
