"""The backend contract: how jobs are stored and moved between queues.

A backend only stores and moves data. The worker, scheduler and API own the decisions
(retry or give up, when to promote) and the logging.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from bananas_core.job import Job, JobError


@dataclass(frozen=True)
class QueueCounts:
    """Number of jobs in each place of one queue."""

    queue: str
    high: int
    normal: int
    low: int
    scheduled: int
    processing: int
    completed: int
    dead: int


class Backend(abc.ABC):
    """Storage for jobs. Every method that changes a job's place is atomic."""

    queue: str

    @abc.abstractmethod
    async def enqueue(self, job: Job) -> tuple[Job, bool]:
        """Store a new job in its priority queue, or in the scheduled set if ``run_at`` is set.

        Returns the stored job and True, or the job that already has this id and False.
        """

    @abc.abstractmethod
    async def claim(self, count: int, worker: str, lease: float) -> list[Job]:
        """Lease up to ``count`` queued jobs for ``lease`` seconds, highest priority first."""

    @abc.abstractmethod
    async def wait_for_jobs(self, timeout: float) -> None:
        """Block until a job may be waiting or ``timeout`` seconds pass."""

    @abc.abstractmethod
    async def complete(self, job: Job, result: object) -> bool:
        """Record a successful run. Returns False if the job's lease was lost."""

    @abc.abstractmethod
    async def fail(self, job: Job, error: JobError, retry_at_ms: int | None) -> bool:
        """Record a failed run: a retry due at ``retry_at_ms``, or the dead letter queue if None.

        Returns False if the job's lease was lost.
        """

    @abc.abstractmethod
    async def release(self, job: Job) -> bool:
        """Return an unfinished job to the head of its queue. Returns False if its lease was lost."""

    @abc.abstractmethod
    async def heartbeat(self, jobs: list[Job], lease: float) -> list[str]:
        """Extend the leases of running jobs. Returns the ids whose lease was lost."""

    @abc.abstractmethod
    async def promote_due(self, limit: int) -> int:
        """Move up to ``limit`` due scheduled jobs to their queues. Returns how many moved."""

    @abc.abstractmethod
    async def requeue_expired(self, limit: int) -> list[str]:
        """Return up to ``limit`` jobs with an expired lease to their queues. Returns their ids."""

    @abc.abstractmethod
    async def purge_finished(self, completed_ttl: float, dead_ttl: float, limit: int) -> int:
        """Delete completed and dead jobs older than their retention. Returns how many."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job:
        """Return the job with this id. Raises JobNotFound."""

    @abc.abstractmethod
    async def counts(self) -> QueueCounts:
        """Return the number of jobs in each place of this queue."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Check that the storage answers. Raises BackendError."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""
