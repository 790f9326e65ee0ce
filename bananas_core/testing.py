"""A test kit for handlers and plugins: an in-memory queue that runs jobs inside the test.

``MemoryQueue`` stores jobs on the embedded fakeredis store, with the same Lua scripts as
Redis, and ``run_all`` claims and runs them through the registry, the job wrappers and the
observer hooks until no job is due. Its ``clock`` is real time plus the seconds a test
advanced it, so a test can make a retry or a delayed job due without waiting::

    queue = MemoryQueue()
    queue.register("double", lambda payload: payload["n"] * 2)
    job = await queue.enqueue("double", {"n": 21})
    await queue.run_all()
    assert (await queue.get(job.id)).result == 42

The pytest plugin in ``bananas_core.pytest_plugin`` provides it as the ``bananas_queue``
fixture.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import fakeredis
from fakeredis import aioredis as fake_aioredis

from bananas_core.backends.redis import RedisBackend
from bananas_core.context import JobContext, job_logger
from bananas_core.errors import PermanentError
from bananas_core.execution import JobTimeout, UnknownHandler, describe_error, run_handler
from bananas_core.job import Job, JobStatus, Priority, new_job, utc_now
from bananas_core.periodic import Schedule, run_due_schedules
from bananas_core.plugins import Plugins, call_job_wrappers, load_plugins, notify

logger = logging.getLogger(__name__)

DEFAULT_MAX_RUNS = 1000  # runs per run_all before it decides that jobs never stop coming
WORKER_ID = "bananas-testing"
LEASE = 3600.0  # seconds, longer than a test runs, so no lease expires during one


class FakeClock:
    """A clock that runs with real time, plus the seconds that ``advance`` added.

    It never runs behind real time, because the Lua scripts of the backend take their time
    from the (real) server clock, and a job is due once either clock passed its run time.
    """

    def __init__(self) -> None:
        self.offset = 0.0  # seconds added by advance()

    def now(self) -> datetime:
        """Return the clock's current time as an aware UTC datetime."""
        return utc_now() + timedelta(seconds=self.offset)

    def advance(self, seconds: float) -> datetime:
        """Move the clock ``seconds`` forward and return the new time. Raises ValueError below 0."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"invalid advance {seconds!r}: expected seconds >= 0; the clock never goes back")
        self.offset += seconds
        return self.now()


class MemoryQueue:
    """An in-memory bananas store with the handlers of ``plugins``, for tests.

    ``plugins`` defaults to ``load_plugins()``: the built-in plugin and every installed
    entry-point plugin, as a worker loads them. ``progress`` collects each job's progress
    reports, and ``request_cancel`` makes a job's ``ctx.cancel_requested`` True.
    """

    def __init__(self, plugins: Plugins | None = None, *, queue: str = "default", clock: FakeClock | None = None) -> None:
        self.plugins = plugins if plugins is not None else load_plugins()
        self.registry = self.plugins.registry
        self.clock = clock or FakeClock()
        self.queue = queue
        self.progress: dict[str, list[tuple[float, str | None]]] = defaultdict(list)
        self._cancel_requested: set[str] = set()
        self._server = fakeredis.FakeServer()
        self._backends: dict[str, RedisBackend] = {}
        self.backend = self.backend_for(queue)

    def backend_for(self, queue: str) -> RedisBackend:
        """Return the backend of the named ``queue`` on this store, created on first use."""
        if queue not in self._backends:
            client = fake_aioredis.FakeRedis(server=self._server, decode_responses=True)
            self._backends[queue] = RedisBackend(
                client, prefix="bananas-test", queue=queue, display_url="memory://testing"
            )
        return self._backends[queue]

    def register(self, name: str, function: Callable[..., Any], **options: Any) -> None:
        """Register a handler for this test, with the options of ``HandlerRegistry.register``."""
        self.registry.current_plugin = "<test>"
        try:
            self.registry.register(name, function, **options)
        finally:
            self.registry.current_plugin = "<direct>"

    async def enqueue(
        self,
        name: str,
        payload: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: Priority | str | None = None,
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submit a job as the API does: the handler's defaults apply and its schema is checked.

        Raises InvalidPayload when the payload does not match the handler's schema. Returns
        the job as stored; a job with ``delay`` is scheduled and runs once the clock passes it.
        """
        payload = dict(payload or {})
        handler = self.registry.get(name)
        defaults = handler.job_defaults() if handler is not None else {}
        if handler is not None:
            payload = handler.validate_payload(payload)
        job = new_job(
            name,
            payload,
            queue=queue or defaults.get("queue") or self.queue,
            priority=priority or defaults.get("priority") or Priority.normal,
            delay=delay,
            max_retries=_first(max_retries, defaults.get("max_retries"), 3),
            timeout=_first(timeout, defaults.get("timeout"), 300.0),
        )
        (stored, _), = await self.backend_for(job.queue).submit_jobs([job], [None], 0.0)
        await notify(self.plugins.manager, "bananas_job_enqueued", job=stored)
        return stored

    async def get(self, job_id: str) -> Job:
        """Return the job as stored. Raises JobNotFound."""
        return await self.backend.get_job(job_id)

    async def run_all(self, *, max_runs: int = DEFAULT_MAX_RUNS) -> list[Job]:
        """Run every job that is due by the clock, and those they lead to, until none is due.

        Returns each job that ran, as stored at the end, in the order of its first run.
        Raises RuntimeError after ``max_runs`` runs.
        """
        ran: dict[str, None] = {}
        runs = 0
        while True:
            progressed = False
            for backend in list(self._backends.values()):
                done = await run_jobs(
                    backend,
                    self.plugins,
                    clock=self.clock,
                    max_runs=max_runs - runs,
                    make_context=self._context,
                )
                runs += len(done)
                progressed = progressed or bool(done)
                ran.update((job.id, None) for job in done)
            if not progressed:
                break
        return [await self.get(job_id) for job_id in ran]

    async def run_schedules(self, schedules: list[Schedule]) -> list[Job]:
        """Submit the ticks of ``schedules`` that are due by the clock. Returns the jobs created."""
        return await run_due_schedules(
            self.backend, schedules, self.clock.now(), registry=self.registry
        )

    def request_cancel(self, job_id: str) -> None:
        """Make ``ctx.cancel_requested`` True in the runs of job ``job_id``."""
        self._cancel_requested.add(job_id)

    def _context(self, job: Job) -> JobContext:
        def record(fraction: float, message: str | None) -> None:
            self.progress[job.id].append((fraction, message))

        return JobContext(
            job=job,
            logger=job_logger(job),
            progress_sink=record,
            cancel_flag=lambda: job.id in self._cancel_requested,
        )


async def run_jobs(
    backend: RedisBackend,
    plugins: Plugins,
    *,
    clock: FakeClock | None = None,
    max_runs: int = DEFAULT_MAX_RUNS,
    make_context: Callable[[Job], JobContext] | None = None,
) -> list[Job]:
    """Claim and run the queued jobs of ``backend`` one at a time until none is due.

    Runs each through ``bananas_core.execution.run_handler`` inside the ``bananas_wrap_job``
    wrappers, records the outcome as the worker does (retry policy, dead letter queue) and
    calls the observer hooks. With ``clock``, scheduled jobs due by the clock run too.
    Returns the claimed jobs in the order they ran. Raises RuntimeError after ``max_runs``
    runs, which a job that retries at once without end would otherwise never stop.
    """
    limiter = anyio.CapacityLimiter(1)
    ran: list[Job] = []
    while True:
        if clock is not None:
            await _promote_due(backend, clock)
        else:
            await backend.promote_due(DEFAULT_MAX_RUNS)
        claimed = await backend.claim(1, WORKER_ID, LEASE)
        if not claimed:
            return ran
        if len(ran) >= max_runs:
            await backend.release(claimed[0])
            raise RuntimeError(
                f"run_jobs ran {len(ran)} jobs and more are due; a job may be retrying or "
                "enqueuing jobs without end. Raise max_runs if this many runs are expected."
            )
        job = claimed[0]
        ran.append(job)
        context = make_context(job) if make_context else JobContext(job=job, logger=job_logger(job))
        await _run_one(backend, plugins, job, context, limiter)


async def _promote_due(backend: RedisBackend, clock: FakeClock) -> None:
    # The promote script compares run times with the real server clock. Scores of the jobs
    # due by the fake clock drop to 0 first, so the script moves them too.
    due_ms = round(clock.now().timestamp() * 1000)
    ids = await backend.client.zrangebyscore(backend.keys.scheduled, "-inf", due_ms)
    if ids:
        await backend.client.zadd(backend.keys.scheduled, {job_id: 0 for job_id in ids}, xx=True)
    while await backend.promote_due(DEFAULT_MAX_RUNS) == DEFAULT_MAX_RUNS:
        pass


async def _run_one(
    backend: RedisBackend, plugins: Plugins, job: Job, context: JobContext, limiter: anyio.CapacityLimiter
) -> None:
    manager = plugins.manager
    handler = plugins.registry.get(job.name)
    if handler is None:
        error = UnknownHandler(f"no handler is registered for job name {job.name!r}")
        details = describe_error(error)
        await backend.fail(job, details, None)
        dead = job.model_copy(update={"status": JobStatus.dead, "error": details})
        await notify(manager, "bananas_job_dead", job=dead, error=details)
        return

    await notify(manager, "bananas_job_started", job=job)
    try:
        if handler.schema is not None:
            # The handler receives the schema's model: run_handler passes job.payload along.
            prepared = handler.prepare_payload(job.payload)
            context = _with_job(context, job.model_copy(update={"payload": prepared}))
        result = await call_job_wrappers(
            manager, job, context, lambda: run_handler(handler, context.job, context, limiter)
        )
    except Exception as error:  # noqa: BLE001 - any error of a handler fails its run, as in the worker
        await _record_failure(backend, plugins, job, error)
        return

    await backend.complete(job, result)
    completed = job.model_copy(update={"status": JobStatus.completed, "result": result})
    await notify(manager, "bananas_job_succeeded", job=completed, result=result)


async def _record_failure(backend: RedisBackend, plugins: Plugins, job: Job, error: Exception) -> None:
    manager = plugins.manager
    details = describe_error(error)
    await notify(manager, "bananas_job_failed", job=job, error=details)

    delay = None if isinstance(error, PermanentError) else _retry_delay(plugins, job, error)
    await backend.fail(job, details, delay)
    if delay is None:
        dead = job.model_copy(update={"status": JobStatus.dead, "error": details})
        await notify(manager, "bananas_job_dead", job=dead, error=details)
        return
    retried = job.model_copy(update={"status": JobStatus.scheduled, "retries": job.retries + 1, "error": details})
    await notify(manager, "bananas_job_retry_scheduled", job=retried, error=details, delay=delay)


def _retry_delay(plugins: Plugins, job: Job, error: Exception) -> float | None:
    # Decide as the worker does: the hook's result, where False or an invalid value gives up.
    if isinstance(error, JobTimeout):
        error = TimeoutError(str(error))
    decision = plugins.manager.hook.bananas_retry_delay(job=job, error=error)
    if decision is False or decision is None or isinstance(decision, bool):
        return None
    if not isinstance(decision, (int, float)) or not (math.isfinite(decision) and decision >= 0):
        logger.error("Retry policy returned %r for job %s:%s; giving up", decision, job.id, job.name)
        return None
    return float(decision)


def _with_job(context: JobContext, job: Job) -> JobContext:
    return JobContext(job=job, logger=context.logger, progress_sink=context.progress_sink, cancel_flag=context.cancel_flag)


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)
