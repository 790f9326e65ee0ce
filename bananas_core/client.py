"""A Python client for submitting and reading jobs straight through the backend."""

from __future__ import annotations

import logging
from typing import Any

from bananas_core.backends import create_backend
from bananas_core.backends.base import Backend, QueueCounts
from bananas_core.errors import BananasError
from bananas_core.job import Job, Priority, new_job
from bananas_core.plugins import Plugins, load_plugins, notify
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)


class Client:
    """Submits and reads jobs on the backend of ``settings.REDIS_URL``, without HTTP.

    Use it as ``async with Client(settings) as client:`` so its connections are closed.
    """

    def __init__(
        self, settings: Settings, *, plugins: Plugins | None = None, backend: Backend | None = None
    ) -> None:
        self.settings = settings
        self.plugins = plugins or load_plugins(settings.plugin_modules)
        self.backend = backend or create_backend(self.plugins.manager, settings)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.backend.close()

    async def submit(
        self,
        name: str,
        payload: dict[str, Any] | None = None,
        *,
        priority: Priority | str = Priority.normal,
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Enqueue a job for handler ``name`` and return it as stored."""
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise BananasError(
                f"invalid payload {payload!r}: expected a JSON object (a dict), "
                f"not {type(payload).__name__}"
            )
        job = new_job(
            name,
            payload,
            queue=self.settings.QUEUE,
            priority=priority,
            delay=delay,
            max_retries=self.settings.MAX_RETRIES if max_retries is None else max_retries,
            timeout=self.settings.JOB_TIMEOUT if timeout is None else timeout,
        )
        stored, created = await self.backend.enqueue(job)
        if created:
            logger.info("Enqueued job %s:%s with priority %s", job.id, job.name, job.priority.value)
            await notify(self.plugins.manager, "bananas_job_enqueued", job=stored)
        return stored

    async def get_job(self, job_id: str) -> Job:
        """Return the job with this id. Raises JobNotFound."""
        return await self.backend.get_job(job_id)

    async def counts(self) -> QueueCounts:
        """Return the number of jobs in each place of the configured queue."""
        return await self.backend.counts()
