"""The worker: leases jobs from the priority queues and runs them through their handlers."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from bananas_core.backends.base import Backend, WorkerInfo
from bananas_core.context import JobContext, job_logger
from bananas_core.errors import BackendError, PermanentError
from bananas_core.execution import JobTimeout, UnknownHandler, describe_error, run_handler
from bananas_core.job import Job, JobError, JobStatus, from_ms, now_ms, utc_now
from bananas_core.metrics import JobStats, Outcome
from bananas_core.plugins import Plugins, call_job_wrappers, notify, service_lifecycle
from bananas_core.retry import exponential_backoff
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

IDLE_WAIT = 1.0  # seconds an idle worker blocks on the wake-up list before it claims again
CONTROL_INTERVAL = 1.0  # seconds between checks for cancel requests and metric flushes
BACKOFF_MAX = 10.0  # seconds between attempts to reach an unreachable backend, at most


class Worker:
    """Runs up to ``WORKER_CONCURRENCY`` jobs at once until it is stopped."""

    def __init__(self, settings: Settings, backend: Backend, plugins: Plugins) -> None:
        self.settings = settings
        self.backend = backend
        self.plugins = plugins
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.concurrency = settings.WORKER_CONCURRENCY
        self.running: dict[str, Job] = {}
        self._run_scopes: dict[str, anyio.CancelScope] = {}  # cancelled when a lease is lost
        self._cancel_requested: set[str] = set()  # running jobs a caller asked to cancel
        self.stats = JobStats()
        self._register_failures = 0
        self._control_failures = 0
        self.started_at = now_ms()
        self._slot_freed = anyio.Event()
        self._stopping = False
        self._fetch_scope: anyio.CancelScope | None = None
        self._jobs_scope: anyio.CancelScope | None = None
        # A thread abandoned at a timeout gives its token back, so the pool stays this size.
        self._threads = anyio.CapacityLimiter(self.concurrency)

    async def run(self, handle_signals: bool = True) -> None:
        """Fetch and run jobs until ``stop()`` or SIGTERM/SIGINT, then shut down gracefully."""
        logger.info(
            "Worker %s starting on queue %s with concurrency %d, handlers: %s",
            self.id,
            self.backend.queue,
            self.concurrency,
            ", ".join(self.plugins.registry.names()) or "none",
        )
        async with anyio.create_task_group() as services:
            if handle_signals:
                # Handlers are in place before the first claim, so a SIGTERM always drains.
                await services.start(self._watch_signals)
            await self._register()
            services.start_soon(self._renew_leases)
            services.start_soon(self._control)

            async with service_lifecycle(self.plugins.manager, "worker", worker=self):
                with anyio.CancelScope() as self._jobs_scope:
                    async with anyio.create_task_group() as jobs:
                        with anyio.CancelScope() as self._fetch_scope:
                            if self._stopping:
                                self._fetch_scope.cancel()
                            await self._fetch_loop(jobs)
                        await self._drain()
            services.cancel_scope.cancel()

        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._flush_stats()
            try:
                await self.backend.deregister_worker(self.id)
            except BackendError as error:
                logger.warning("Worker %s could not deregister: %s", self.id, error)
        logger.info("Worker %s stopped", self.id)

    def stop(self) -> None:
        """Stop fetching, and let running jobs finish within SHUTDOWN_GRACE."""
        if not self._stopping:
            logger.info(
                "Worker %s stopping: waiting up to %gs for %d running jobs",
                self.id, self.settings.SHUTDOWN_GRACE, len(self.running),
            )
        self._stopping = True
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()

    def abort(self) -> None:
        """Stop at once: running jobs are cancelled and returned to the head of their queue."""
        logger.warning("Worker %s aborting %d running jobs", self.id, len(self.running))
        self.stop()
        if self._jobs_scope is not None:
            self._jobs_scope.cancel()

    async def _watch_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for received in signals:
                if self._stopping:
                    logger.warning("Received %s again", signal.Signals(received).name)
                    self.abort()
                else:
                    logger.info("Received %s", signal.Signals(received).name)
                    self.stop()

    async def _fetch_loop(self, jobs: TaskGroup) -> None:
        failures = 0
        while not self._stopping:
            free = self.concurrency - len(self.running)
            if free <= 0:
                self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
                continue

            try:
                # Shielded so that a stop cannot drop the reply of a claim that Redis carried out.
                with anyio.CancelScope(shield=True):
                    claimed = await self.backend.claim(free, self.id, self.settings.LEASE_TIMEOUT)
                if not claimed:
                    await self.backend.wait_for_jobs(IDLE_WAIT)
                failures = 0
            except BackendError as error:
                failures += 1
                await self._backoff("fetch jobs", error, failures)
                continue

            for job in claimed:
                self.running[job.id] = job
                jobs.start_soon(self._run_job, job, name=f"job {job.id}")

    async def _drain(self) -> None:
        # Running jobs get SHUTDOWN_GRACE to finish, and the rest are cancelled and released.
        with anyio.move_on_after(self.settings.SHUTDOWN_GRACE):
            while self.running:
                self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
        if self.running and self._jobs_scope is not None:
            logger.warning(
                "Worker %s returning %d unfinished jobs to their queue after the grace period",
                self.id, len(self.running),
            )
            self._jobs_scope.cancel()

    async def _run_job(self, job: Job) -> None:
        scope = self._run_scopes[job.id] = anyio.CancelScope()
        try:
            with scope:
                await self._execute(job)
            if scope.cancelled_caught and job.id in self._cancel_requested:
                await self._finish_cancelled(job)
            elif scope.cancelled_caught:
                logger.warning(
                    "Stopped job %s:%s: its lease was lost, so another worker may run it",
                    job.id, job.name,
                )
                self.stats.record(job.queue, job.name, Outcome.lost, None, None)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                released = await self._record(job, lambda: self.backend.release(job))
            if released:
                logger.info("Returned job %s:%s to the head of its queue", job.id, job.name)
            raise
        finally:
            self.running.pop(job.id, None)
            self._run_scopes.pop(job.id, None)
            self._cancel_requested.discard(job.id)
            self._slot_freed.set()

    async def _execute(self, job: Job) -> None:
        handler = self.plugins.registry.get(job.name)
        if handler is None:
            installed = ", ".join(self.plugins.registry.names()) or "none"
            error = UnknownHandler(
                f"no installed plugin handles job name {job.name!r} (installed handlers: "
                f"{installed}); install the plugin that provides it and retry the job"
            )
            await self._give_up(job, describe_error(error))
            return

        logger.info(
            "Started job %s:%s attempt %d of %d", job.id, job.name, job.attempts, job.max_retries + 1
        )
        await notify(self.plugins.manager, "bananas_job_started", job=job)
        context = JobContext(
            job=job,
            logger=job_logger(job),
            cancel_flag=lambda: job.id in self._cancel_requested,
            progress_sink=partial(self.backend.set_progress, job),
        )
        started = anyio.current_time()
        try:
            result = await call_job_wrappers(
                self.plugins.manager, job, context, lambda: run_handler(handler, context, self._threads)
            )
        except anyio.get_cancelled_exc_class():
            raise
        except (Exception, SystemExit) as error:
            # SystemExit from a handler fails its job instead of ending the worker.
            await self._handle_failure(job, error)
            return

        with anyio.CancelScope(shield=True):
            recorded = await self._record(job, lambda: self.backend.complete(job, result))
        elapsed = anyio.current_time() - started
        if not recorded:
            logger.warning(
                "Job %s:%s finished in %.3fs but its lease was lost; result discarded",
                job.id, job.name, elapsed,
            )
            return
        logger.info("Completed job %s:%s in %.3fs", job.id, job.name, elapsed)
        self.stats.record(job.queue, job.name, Outcome.completed, elapsed, _wait_seconds(job))
        job = job.model_copy(update={
            "status": JobStatus.completed, "result": result, "finished_at": utc_now(), "worker": None,
        })
        await notify(self.plugins.manager, "bananas_job_succeeded", job=job, result=result)

    async def _handle_failure(self, job: Job, error: BaseException) -> None:
        details = describe_error(error)
        await notify(self.plugins.manager, "bananas_job_failed", job=job, error=details)

        delay = None if isinstance(error, PermanentError) else self._retry_delay(job, error)
        if delay is None:
            await self._give_up(job, details)
            return

        with anyio.CancelScope(shield=True):
            recorded = await self._record(job, lambda: self.backend.fail(job, details, delay))
        if not recorded:
            logger.warning("Job %s:%s failed but its lease was lost; not retried here", job.id, job.name)
            return

        self.stats.record(job.queue, job.name, Outcome.retried, _run_seconds(job), _wait_seconds(job))
        logger.warning(
            "Job %s:%s failed on attempt %d (%s: %s); retry %d of %d in %.1fs",
            job.id, job.name, job.attempts, details.type, details.message,
            job.retries + 1, job.max_retries, delay,
        )
        # The observers see the job as the fail script stored it: due now goes straight back to
        # its queue, later waits in the scheduled set.
        due_now = delay == 0
        job = job.model_copy(update={
            "status": JobStatus.pending if due_now else JobStatus.scheduled,
            "retries": job.retries + 1,
            "run_at": None if due_now else from_ms(now_ms() + round(delay * 1000)),
            "error": details,
            "finished_at": utc_now(),
            "worker": None,
        })
        await notify(
            self.plugins.manager, "bananas_job_retry_scheduled", job=job, error=details, delay=delay
        )

    async def _give_up(self, job: Job, details: JobError) -> None:
        with anyio.CancelScope(shield=True):
            recorded = await self._record(job, lambda: self.backend.fail(job, details, None))
        if not recorded:
            logger.warning("Job %s:%s failed but its lease was lost", job.id, job.name)
            return
        self.stats.record(job.queue, job.name, Outcome.dead, _run_seconds(job), _wait_seconds(job))
        logger.error(
            "Job %s:%s moved to the dead letter queue after %d attempts: %s: %s",
            job.id, job.name, job.attempts, details.type, details.message,
        )
        job = job.model_copy(update={
            "status": JobStatus.dead, "error": details, "finished_at": utc_now(), "worker": None,
        })
        await notify(self.plugins.manager, "bananas_job_dead", job=job, error=details)

    def _retry_delay(self, job: Job, error: BaseException) -> float | None:
        """Ask the retry policy plugins for the delay before the next run. None means give up."""
        if isinstance(error, JobTimeout):
            error = TimeoutError(str(error))
        try:
            decision = self.plugins.manager.hook.bananas_retry_delay(job=job, error=error)
        except Exception:
            logger.exception(
                "Retry policy raised for job %s:%s; the handler's own policy decides", job.id, job.name
            )
            decision = self._fallback_delay(job)

        if decision is False or decision is None:
            return None
        if isinstance(decision, bool) or not isinstance(decision, (int, float)) or not (
            math.isfinite(decision) and decision >= 0
        ):
            logger.error(
                "Retry policy returned %r for job %s:%s, expected seconds >= 0 or False; "
                "the built-in backoff decides", decision, job.id, job.name,
            )
            fallback = self._fallback_delay(job)
            return None if fallback is False else float(fallback)
        return float(decision)

    def _fallback_delay(self, job: Job) -> float | bool:
        handler = self.plugins.registry.get(job.name)
        if handler is not None and handler.retry_policy is not None:
            return handler.retry_policy.delay(job)
        return exponential_backoff(job)

    async def _record(self, job: Job, write: Callable[[], Awaitable[bool]]) -> bool:
        """Write a job's outcome, retrying while the backend is unreachable.

        Gives up after one lease period: by then the scheduler has returned the job to its
        queue, and a late write would be rejected by its stale delivery token anyway.
        """
        # The first write goes without a deadline scope: a scope costs a few microseconds on
        # every job, and it only matters once the backend fails.
        try:
            return await write()
        except BackendError as error:
            failures = 1
            await self._backoff(f"record job {job.id}", error, failures)
        with anyio.move_on_after(self.settings.LEASE_TIMEOUT):
            while True:
                try:
                    return await write()
                except BackendError as error:
                    failures += 1
                    await self._backoff(f"record job {job.id}", error, failures)
        logger.error(
            "Could not record the outcome of job %s:%s; its lease will expire and it runs again",
            job.id, job.name,
        )
        return False

    async def _renew_leases(self) -> None:
        interval = self.settings.LEASE_TIMEOUT / 3
        failures = 0
        while True:
            await anyio.sleep(interval)
            await self._register()
            jobs = list(self.running.values())
            try:
                lost = await self.backend.heartbeat(jobs, self.settings.LEASE_TIMEOUT)
                failures = 0
            except BackendError as error:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    logger.warning(
                        "Worker %s could not renew %d leases (failure %d): %s",
                        self.id, len(jobs), failures, error,
                    )
                continue
            for job_id in lost:
                # Another worker owns the job now, and its run wins: stop ours. A sync thread
                # cannot stop, but its outcome is rejected by the stale delivery token.
                logger.warning("Worker %s lost the lease of job %s", self.id, job_id)
                scope = self._run_scopes.get(job_id)
                if scope is not None:
                    scope.cancel()

    async def _register(self) -> None:
        # The registration lives one lease period, so a dead worker leaves the list as its
        # jobs' leases expire.
        info = WorkerInfo(
            id=self.id,
            queue=self.backend.queue,
            handlers=self.plugins.registry.names(),
            concurrency=self.concurrency,
            running=len(self.running),
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            heartbeat_at=0,
        )
        try:
            await self.backend.register_worker(info, self.settings.LEASE_TIMEOUT)
            self._register_failures = 0
        except BackendError as error:
            self._register_failures += 1
            if self._register_failures == 1 or self._register_failures % 10 == 0:
                logger.warning(
                    "Worker %s could not register (failure %d): %s", self.id, self._register_failures, error
                )

    async def _control(self) -> None:
        """Stop running jobs whose cancellation was requested, and flush the job counters."""
        while True:
            await anyio.sleep(CONTROL_INTERVAL)
            await self._flush_stats()
            if not self.running:
                continue
            try:
                requested = await self.backend.cancel_requests(list(self.running.values()))
                self._control_failures = 0
            except BackendError as error:
                self._control_failures += 1
                if self._control_failures == 1 or self._control_failures % 10 == 0:
                    logger.warning(
                        "Worker %s could not read cancel requests (failure %d): %s",
                        self.id, self._control_failures, error,
                    )
                continue
            for job_id in requested:
                scope = self._run_scopes.get(job_id)
                if scope is not None and job_id not in self._cancel_requested:
                    logger.info("Cancelling job %s at the caller's request", job_id)
                    self._cancel_requested.add(job_id)
                    scope.cancel()

    async def _finish_cancelled(self, job: Job) -> None:
        with anyio.CancelScope(shield=True):
            recorded = await self._record(job, lambda: self.backend.finish_cancelled(job))
        if recorded:
            logger.info("Cancelled job %s:%s while it ran", job.id, job.name)
            self.stats.record(job.queue, job.name, Outcome.cancelled, _run_seconds(job), None)
        else:
            logger.warning("Job %s:%s was cancelled but its lease was lost", job.id, job.name)

    async def _flush_stats(self) -> None:
        increments = self.stats.take()
        if not increments:
            return
        try:
            await self.backend.add_job_metrics(increments)
        except BackendError as error:
            # The increments wait for the next flush; the outage is logged by the other loops.
            self.stats.restore(increments)
            logger.debug("Worker %s could not flush job metrics: %s", self.id, error)

    async def _backoff(self, action: str, error: BackendError, failures: int) -> None:
        delay = min(0.1 * 2 ** (failures - 1), BACKOFF_MAX)
        # The first failure and then every tenth is logged, so an outage does not flood the log.
        if failures == 1 or failures % 10 == 0:
            logger.warning(
                "Worker %s could not %s (failure %d), retrying in %.1fs: %s",
                self.id, action, failures, delay, error,
            )
        await anyio.sleep(delay)


def _run_seconds(job: Job) -> float | None:
    if job.started_at is None:
        return None
    return max((utc_now() - job.started_at).total_seconds(), 0.0)


def _wait_seconds(job: Job) -> float | None:
    # Only a first attempt has a meaningful wait: from submission to its start.
    if job.attempts != 1 or job.started_at is None:
        return None
    return max((job.started_at - job.created_at).total_seconds(), 0.0)
