"""The backend contract: how jobs are stored and moved between queues.

A backend only stores and moves data. The worker, scheduler and API own the decisions
(retry or give up, when to promote) and the logging.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import IntEnum

from bananas_core.job import Job, JobError, JobStatus, NewJob


class Recorded(IntEnum):
    """The fate of one outcome sent to ``Backend.exchange``. Only ``stale`` is false."""

    stale = 0  # the job's lease was lost, so another delivery owns it: nothing was recorded
    recorded = 1
    # A failed run whose retry gave way to a cancel request made while it ran: the job is
    # cancelled, with the run's error, and does not run again.
    cancelled = 2


@dataclass(frozen=True)
class RunOutcome:
    """The outcome of one run of a leased job, as the worker hands it to ``Backend.exchange``.

    ``kind`` is ``completed``, ``retry`` (run again ``retry_delay`` seconds from now) or
    ``dead`` (to the dead letter queue). ``value`` is the result's JSON for ``completed`` ('' for
    None), and the error's JSON for the other two.
    """

    job: Job
    kind: str
    value: str
    retry_delay: float = 0.0


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
    cancelled: int = 0  # filled by queue_counts; counts() predates the cancelled status


class Backend(abc.ABC):
    """Storage for jobs. Every method that changes a job's place is atomic."""

    queue: str

    @abc.abstractmethod
    async def enqueue(self, job: Job) -> tuple[Job, bool]:
        """Store a new job in the priority list of its queue, or in the scheduled set if ``run_at`` is set.

        Returns the stored job and True, or the job that already has this id and False.
        """

    @abc.abstractmethod
    async def claim(self, count: int, worker: str, lease: float) -> list[Job]:
        """Lease up to ``count`` queued jobs for ``lease`` seconds, highest priority first."""

    @abc.abstractmethod
    async def exchange(
        self, outcomes: list[RunOutcome], count: int, worker: str, lease: float
    ) -> tuple[list[Recorded], list[Job]]:
        """Record ``outcomes``, then lease up to ``count`` jobs, as one atomic step.

        Returns what became of each outcome and the leased jobs. A busy worker acknowledges
        its finished runs and fetches the next ones in one round trip.
        """

    @abc.abstractmethod
    async def wait_for_jobs(self, timeout: float) -> None:
        """Block until a job may be waiting or ``timeout`` seconds pass."""

    async def wait_and_lease(self, timeout: float, count: int, worker: str, lease: float) -> list[Job]:
        """Block as ``wait_for_jobs`` does, or until ``interrupt_wait(worker)``, then lease up to ``count`` jobs.

        A backend may do both in one round trip, which is what an idle worker's pickup
        latency is made of.
        """
        await self.wait_for_jobs(timeout)
        _, jobs = await self.exchange([], count, worker, lease)
        return jobs

    async def interrupt_wait(self, worker: str) -> None:
        """End the ``wait_and_lease`` call of ``worker`` early, so that it can stop."""

    @abc.abstractmethod
    async def complete(self, job: Job, result: object) -> bool:
        """Record a successful run. Returns False if the job's lease was lost."""

    @abc.abstractmethod
    async def fail(self, job: Job, error: JobError, retry_delay: float | None) -> bool:
        """Record a failed run: a retry ``retry_delay`` seconds from now, or dead letter if None.

        Returns False if the job's lease was lost. A retry gives way to a cancel request made
        while the job ran: the job is cancelled instead.
        """

    @abc.abstractmethod
    async def release(self, job: Job) -> Recorded:
        """Return an unfinished job to the head of its queue.

        Returns ``recorded`` when it went back, ``cancelled`` when its cancellation had been
        requested (it is cancelled instead), and ``stale``, which is false, when its lease
        was lost.
        """

    @abc.abstractmethod
    async def heartbeat(self, jobs: list[Job], lease: float) -> list[str]:
        """Extend the leases of running jobs. Returns the ids whose lease was lost."""

    async def leased_to(self, worker: str) -> list[Job]:
        """Return the jobs whose current lease belongs to ``worker``, as stored, in lease order.

        A worker calls this after a call that leases jobs failed, because Redis may have carried
        the call out and lost only the reply. A backend that cannot tell returns an empty list, and
        such jobs wait for their lease to expire.
        """
        return []

    @abc.abstractmethod
    async def set_progress(self, job: Job, fraction: float, message: str | None) -> bool:
        """Store a running job's progress report. Returns False if its lease was lost."""

    @abc.abstractmethod
    async def promote_due(self, limit: int) -> int:
        """Move up to ``limit`` due scheduled jobs to their queues. Returns how many moved."""

    @abc.abstractmethod
    async def requeue_expired(self, limit: int, poison_threshold: int) -> list[tuple[str, str]]:
        """Return up to ``limit`` jobs with an expired lease to the head of their queues.

        A job whose lease expired ``poison_threshold`` times goes to the dead letter queue
        instead, and one whose cancellation was requested is cancelled. Returns
        ``(job id, "requeued", "dead" or "cancelled")`` for each job handled.
        """

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
        """Check that the storage responds. Raises BackendError."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    # Operations of the API, the client and the CLI. Methods that take a ``queue`` work on that
    # named queue under the backend's prefix, so one API process serves every queue.

    @abc.abstractmethod
    async def submit_jobs(
        self, jobs: list[Job], unique_keys: list[str | None], window: float
    ) -> list[tuple[Job, bool]]:
        """Store new jobs of one queue in one atomic step.

        ``unique_keys[i]`` is job i's idempotency key or None. A job whose key was used within
        the last ``window`` seconds is not stored. Returns, for each job, the stored job and
        True, or the job first submitted with its key (or id) and False.
        """

    async def submit_new_jobs(self, drafts: list[NewJob]) -> list[Job]:
        """Store new jobs of one queue in one atomic step, and return them as stored.

        Their ids must come from ``new_job_id``, so that no stored job has one of them, and
        they have no idempotency keys, so nothing needs looking up. A backend may store the
        records before it builds the models. So each draft must build a valid model
        (``NewJob.to_job``), and a stored job with the same id would be replaced.
        """
        jobs = [draft.to_job() for draft in drafts]
        stored = await self.submit_jobs(jobs, [None] * len(jobs), 0.0)
        return [job for job, _ in stored]

    @abc.abstractmethod
    async def list_jobs(
        self,
        queue: str,
        *,
        status: JobStatus | None,
        name: str | None,
        cursor: str | None,
        limit: int,
    ) -> JobPage:
        """Return up to ``limit`` jobs of ``queue`` that match the filters, in no set order.

        Raises ValueError for a cursor that this method did not return.
        """

    @abc.abstractmethod
    async def queue_names(self) -> list[str]:
        """Return the names of the queues that have had jobs under this prefix, sorted."""

    @abc.abstractmethod
    async def queue_counts(self, queue: str) -> QueueCounts:
        """Return the number of jobs in each place of ``queue``."""

    @abc.abstractmethod
    async def oldest_pending(self, queue: str) -> dict[str, int]:
        """Return the creation time (ms) of the oldest pending job of each non-empty priority."""

    @abc.abstractmethod
    async def cancel_job(self, job_id: str) -> tuple[str, Job]:
        """Cancel a pending or scheduled job, or request that a running job stops.

        Returns ``("cancelled" or "requested" or "finished", job)``. Raises JobNotFound.
        """

    @abc.abstractmethod
    async def cancel_requests(self, jobs: list[Job]) -> list[str]:
        """Return the ids of the given running jobs whose cancellation was requested."""

    @abc.abstractmethod
    async def cancel_requested_at(self, job: Job) -> int | None:
        """Return when (ms) cancellation of a running job was requested, or None."""

    @abc.abstractmethod
    async def finish_cancelled(self, job: Job) -> bool:
        """Record that a worker stopped a running job on request. False if the lease was lost."""

    @abc.abstractmethod
    async def purge_cancelled(self, cancelled_ttl: float, limit: int) -> int:
        """Delete cancelled jobs of this queue older than ``cancelled_ttl``. Returns how many."""

    @abc.abstractmethod
    async def retry_dead(self, job_id: str) -> Job:
        """Move one dead job back to its queue. Raises JobNotFound or JobConflict."""

    @abc.abstractmethod
    async def sweep_dead(self, queue: str, action: str, name: str | None) -> int:
        """Requeue (``action="requeue"``) or delete every dead job of ``queue``, optionally only
        those of handler ``name``. Returns how many changed."""

    @abc.abstractmethod
    async def wait_for_job(self, job_id: str, timeout: float) -> Job:
        """Block until the job is completed, dead or cancelled, or ``timeout`` seconds pass.

        Returns the job as stored at that moment. Raises JobNotFound.
        """

    @abc.abstractmethod
    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Store or refresh a worker's registration; it disappears ``ttl`` seconds after the last."""

    @abc.abstractmethod
    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration, at a clean shutdown."""

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerInfo]:
        """Return the workers whose registration has not expired, most recent heartbeat first."""

    @abc.abstractmethod
    async def record_job(
        self, job: Job, outcome: str, run_seconds: float | None, wait_seconds: float | None
    ) -> None:
        """Add one run's outcome, run time and queue wait time to the shared job counters."""

    @abc.abstractmethod
    async def add_job_metrics(self, increments: dict[str, float]) -> None:
        """Add a worker's batched counter increments to the shared job metrics."""

    @abc.abstractmethod
    async def job_metrics(self) -> dict[str, float]:
        """Return the shared job counters as stored, field name to value."""

    @abc.abstractmethod
    async def rate_limit(self, client_id: str, rate: float, burst: int) -> float:
        """Admit one request of ``client_id`` or not. Returns 0, or the seconds until admission."""


# Types of the operations that the API, the client and the CLI use.


@dataclass(frozen=True)
class JobPage:
    """One page of a job listing, and the cursor of the next page (None after the last)."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's description of itself, written at every registration heartbeat."""

    id: str
    queue: str
    handlers: list[str]
    concurrency: int
    running: int  # jobs running at the time of the heartbeat
    host: str
    pid: int
    started_at: int  # ms since the epoch
    heartbeat_at: int  # ms since the epoch, set by register_worker
