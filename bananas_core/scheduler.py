"""The scheduler: moves due jobs to their queues and returns jobs whose lease expired."""

from __future__ import annotations

import logging
import os
import signal
import socket

import anyio

from bananas_core.backends.base import Backend
from bananas_core.errors import BackendError
from bananas_core.periodic import collect_schedules, run_due_schedules
from bananas_core.plugins import Plugins, notify
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)

BATCH = 1000  # jobs moved per script call; each call keeps Redis busy for a bounded time
PURGE_BATCHES_PER_TICK = 20
BACKOFF_MAX = 10.0


class Scheduler:
    """Runs one tick every SCHEDULER_INTERVAL until stopped. Any number may run at once."""

    def __init__(self, settings: Settings, backend: Backend, plugins: Plugins | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.plugins = plugins
        self.schedules = (
            collect_schedules(plugins.manager, settings, plugins.registry) if plugins is not None else []
        )
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self._stopped = anyio.Event()

    async def run(self, handle_signals: bool = True) -> None:
        """Tick until ``stop()`` or SIGTERM/SIGINT."""
        logger.info(
            "Scheduler %s starting on queue %s, tick every %gs",
            self.id, self.backend.queue, self.settings.SCHEDULER_INTERVAL,
        )
        async with anyio.create_task_group() as tasks:
            if handle_signals:
                tasks.start_soon(self._watch_signals)

            failures = 0
            while not self._stopped.is_set():
                try:
                    await self.tick()
                    failures = 0
                    delay = self.settings.SCHEDULER_INTERVAL
                except BackendError as error:
                    failures += 1
                    delay = min(self.settings.SCHEDULER_INTERVAL * 2 ** (failures - 1), BACKOFF_MAX)
                    if failures == 1 or failures % 10 == 0:
                        logger.warning(
                            "Scheduler tick failed (failure %d), retrying in %.1fs: %s",
                            failures, delay, error,
                        )
                with anyio.move_on_after(delay):
                    await self._stopped.wait()
            tasks.cancel_scope.cancel()
        logger.info("Scheduler %s stopped", self.id)

    def stop(self) -> None:
        """Finish the current tick and stop."""
        self._stopped.set()

    async def tick(self) -> int:
        """Promote due jobs, return expired leases, enqueue periodic jobs and purge old jobs.

        Returns the number of jobs promoted.
        """
        if self.schedules:
            await run_due_schedules(
                self.backend,
                self.schedules,
                registry=self.plugins.registry if self.plugins is not None else None,
                settings=self.settings,
            )

        promoted = 0
        while True:
            moved = await self.backend.promote_due(BATCH)
            promoted += moved
            if moved < BATCH:
                break
        if promoted:
            logger.info("Moved %d due jobs to their queues", promoted)

        while True:
            expired = await self.backend.requeue_expired(BATCH, self.settings.POISON_THRESHOLD)
            for job_id, outcome in expired:
                if outcome == "cancelled":
                    logger.info("Cancelled job %s: its worker died and cancellation was requested", job_id)
                elif outcome == "dead":
                    logger.error(
                        "Moved job %s to the dead letter queue: its worker died running it %d times",
                        job_id, self.settings.POISON_THRESHOLD,
                    )
                    await self._notify_dead(job_id)
                else:
                    logger.warning("Returned job %s to its queue: its worker's lease expired", job_id)
            if len(expired) < BATCH:
                break

        # Retention is checked every tick: one range query per set, which usually finds nothing.
        # Up to PURGE_BATCHES_PER_TICK batches keep up with a queue that finishes thousands of
        # jobs a second without holding Redis for long.
        purged = 0
        for _ in range(PURGE_BATCHES_PER_TICK):
            deleted = await self.backend.purge_finished(
                self.settings.COMPLETED_TTL, self.settings.DEAD_TTL, BATCH
            )
            purged += deleted
            if deleted < BATCH:
                break
        purged += await self.backend.purge_cancelled(self.settings.COMPLETED_TTL, BATCH)
        if purged:
            logger.info("Deleted %d completed, dead and cancelled jobs past their retention", purged)
        return promoted

    async def _notify_dead(self, job_id: str) -> None:
        if self.plugins is None:
            return
        job = await self.backend.get_job(job_id)
        if job.error is not None:
            await notify(self.plugins.manager, "bananas_job_dead", job=job, error=job.error)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for received in signals:
                logger.info("Received %s", signal.Signals(received).name)
                self.stop()
