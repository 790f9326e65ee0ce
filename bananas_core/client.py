"""Python clients that submit, read and control jobs straight through the backend, without HTTP.

``Client`` is async; ``SyncClient`` runs the same operations from synchronous code.
"""

from __future__ import annotations

import atexit
import logging
import json
import math
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from typing import Any, TypeVar

from anyio.from_thread import start_blocking_portal

from bananas_core.backends import create_backend
from bananas_core.backends.base import Backend, JobPage, QueueCounts, WorkerInfo
from bananas_core.durations import parse_duration
from bananas_core.errors import BackendError, BananasError, JobConflict, PayloadTooLarge
from bananas_core.job import Job, JobStatus, NewJob, Priority, new_job_draft, now_ms
from bananas_core.plugins import Plugins, load_configured_plugins, notify
from bananas_core.registry import HANDLER_NAME, HANDLER_NAME_RULE
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The same rule as the QUEUE setting, so any queue a client names can be served by a worker.
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# Idempotency keys become part of a Redis key name, so they are visible ASCII without spaces.
UNIQUE_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
MAX_LIST_LIMIT = 1000
# Bounds of the per-job options, as the HTTP API enforces them: larger values are unit
# mistakes, and huge ones overflow the integer milliseconds of the job record.
MAX_DELAY_SECONDS = 366 * 86400.0
MAX_TIMEOUT_SECONDS = 7 * 86400.0
MIN_TIMEOUT_SECONDS = 0.001  # records keep whole milliseconds, so less would be stored as 0
# Deeper payloads are rejected before they are stored: JSON libraries and pydantic stop at a
# few hundred levels, and a stored job that no reader can serialise could never be read.
MAX_PAYLOAD_DEPTH = 64


@dataclass
class JobSpec:
    """One job to submit: the handler name, its payload and how it runs.

    ``delay`` (seconds) and ``run_at`` are alternatives. ``unique_key`` makes the submission
    idempotent for IDEMPOTENCY_WINDOW: a repeat returns the first job instead of a new one.
    Unset options take the handler's registered defaults, then those of the settings.
    """

    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: Priority | str | None = None
    delay: float = 0.0
    run_at: datetime | None = None
    max_retries: int | None = None
    timeout: float | None = None
    unique_key: str | None = None


@dataclass(frozen=True)
class Submission:
    """A submitted job, and whether this submission created it (False: an idempotent repeat)."""

    job: Job
    created: bool


class Client:
    """Submits, reads and controls jobs on the backend of ``settings.REDIS_URL``, without HTTP.

    Use it as ``async with Client(settings) as client:`` so its connections are closed.
    """

    def __init__(
        self, settings: Settings, *, plugins: Plugins | None = None, backend: Backend | None = None
    ) -> None:
        self.settings = settings
        self.plugins = plugins or load_configured_plugins(settings)
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
        queue: str | None = None,
        priority: Priority | str | None = None,
        delay: float = 0.0,
        run_at: datetime | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        unique_key: str | None = None,
    ) -> Job:
        """Enqueue a job for handler ``name`` and return it as stored.

        With ``unique_key``, a repeat within IDEMPOTENCY_WINDOW returns the first job.
        """
        spec = JobSpec(
            name,
            {} if payload is None else payload,
            queue=queue,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_retries=max_retries,
            timeout=timeout,
            unique_key=unique_key,
        )
        return (await self.submit_batch([spec]))[0].job

    async def submit_batch(self, specs: list[JobSpec]) -> list[Submission]:
        """Enqueue jobs of one queue all at once: all are stored, or none is.

        Raises BananasError naming the first invalid job, before anything is stored.
        """
        if not specs:
            return []
        if len(specs) > self.settings.MAX_BATCH_JOBS:
            raise BananasError(
                f"invalid batch of {len(specs)} jobs: at most MAX_BATCH_JOBS="
                f"{self.settings.MAX_BATCH_JOBS} jobs fit in one batch; split it"
            )
        # The jobs of a batch are named by their position, job 0 included.
        where = "job {}" if len(specs) > 1 else "job"
        drafts = [self._build_job(where.format(index), spec) for index, spec in enumerate(specs)]
        queues = {draft.queue for draft in drafts}
        if len(queues) > 1:
            raise BananasError(
                f"invalid batch: its jobs name the queues {', '.join(sorted(queues))}, but one "
                "batch is stored atomically in one queue; send one batch per queue"
            )

        unique_keys = [spec.unique_key for spec in specs]
        try:
            if any(key is not None for key in unique_keys):
                jobs = [draft.to_job() for draft in drafts]
                stored = await self.backend.submit_jobs(jobs, unique_keys, self.settings.IDEMPOTENCY_WINDOW)
            else:
                # Nothing to look up: the backend may send the records before it builds the models.
                jobs = await self.backend.submit_new_jobs(drafts)
                stored = [(job, True) for job in jobs]
        except BackendError as error:
            if all(unique_keys):
                raise
            # A reply that timed out can hide a write that Redis made.
            raise BackendError(
                f"{str(error).rstrip('.')}. The jobs may have been stored even so: give each "
                "submission a unique key (unique_key, or --unique-key on the command line), so "
                "that a retried one cannot store its job twice"
            ) from error
        submissions = []
        # Both checked once per batch rather than once per job.
        observed = bool(self.plugins.manager.hook.bananas_job_enqueued.get_hookimpls())
        log_enqueued = logger.isEnabledFor(logging.INFO)
        for spec, requested, (job, created) in zip(specs, jobs, stored):
            if not created and (job.name, job.payload) != (requested.name, requested.payload):
                # NOTE: in a batch, the other jobs are stored by now; only the reused key fails.
                raise JobConflict(
                    f"idempotency key {spec.unique_key!r} was already used for job {job.id} "
                    f"({job.name}) with another name or payload; use a new key for a new job",
                    job,
                )
            if created:
                if log_enqueued:
                    logger.info(
                        "Enqueued job %s:%s with priority %s", job.id, job.name, job.priority.value
                    )
                if observed:
                    await notify(self.plugins.manager, "bananas_job_enqueued", job=job)
            else:
                logger.info("Returned existing job %s:%s for a repeated submission", job.id, job.name)
            submissions.append(Submission(job, created))
        return submissions

    def _build_job(self, where: str, spec: JobSpec) -> NewJob:
        """Check ``spec`` and return its draft; ``where`` names the job in error messages.

        The backend may store a job before it builds its model, so every value the model would
        reject is rejected here, before anything is sent.
        """
        if not isinstance(spec.payload, dict):
            raise BananasError(
                f"invalid payload {spec.payload!r} of {where}: expected a JSON object (a dict), "
                f"not {type(spec.payload).__name__}"
            )
        _check_json(spec.payload, where, self.settings.MAX_PAYLOAD_BYTES)
        _check_types(spec, where)
        # Options the caller left out take the handler's registered defaults first.
        handler = self.plugins.registry.get(spec.name)
        defaults = handler.job_defaults() if handler is not None else {}
        if handler is not None and (defaults or handler.schema is not None):
            spec = replace(
                spec,
                payload=handler.validate_payload(spec.payload),
                queue=spec.queue or defaults.get("queue"),
                priority=spec.priority or defaults.get("priority") or Priority.normal,
                max_retries=spec.max_retries if spec.max_retries is not None else defaults.get("max_retries"),
                timeout=spec.timeout if spec.timeout is not None else defaults.get("timeout"),
            )
        queue = spec.queue or self.settings.QUEUE
        if not QUEUE_PATTERN.fullmatch(queue):
            raise BananasError(
                f"invalid queue {queue!r} of {where}: expected 1 to 64 letters, digits, "
                "'-', '_' or '.'"
            )
        if spec.unique_key is not None and not UNIQUE_KEY_PATTERN.fullmatch(spec.unique_key):
            raise BananasError(
                f"invalid unique key {spec.unique_key!r} of {where}: expected 1 to 255 visible "
                "ASCII characters without spaces"
            )
        if spec.timeout is not None and not MIN_TIMEOUT_SECONDS <= spec.timeout <= MAX_TIMEOUT_SECONDS:
            raise BananasError(
                f"invalid timeout {spec.timeout!r} of {where}: expected {MIN_TIMEOUT_SECONDS:g} "
                f"to {MAX_TIMEOUT_SECONDS:,.0f} seconds ({MAX_TIMEOUT_SECONDS / 86400:g} days)"
            )
        if spec.max_retries is not None and not 0 <= spec.max_retries <= 100:
            raise BananasError(f"invalid max_retries {spec.max_retries!r} of {where}: expected 0 to 100")
        if not 0 <= spec.delay <= MAX_DELAY_SECONDS:
            raise BananasError(
                f"invalid delay {spec.delay!r} of {where}: expected 0 to {MAX_DELAY_SECONDS:,.0f} "
                f"seconds ({MAX_DELAY_SECONDS / 86400:g} days)"
            )
        run_at_ms = None
        if spec.run_at is not None:
            if spec.delay:
                raise BananasError(f"invalid {where}: set delay or run_at, not both")
            run_at = spec.run_at if spec.run_at.tzinfo else spec.run_at.replace(tzinfo=timezone.utc)
            # Stored as given, to the millisecond. A time already past runs now.
            run_at_ms = round(run_at.timestamp() * 1000)
            if run_at_ms - now_ms() > MAX_DELAY_SECONDS * 1000:
                raise BananasError(
                    f"invalid run_at {run_at.isoformat()} of {where}: at most "
                    f"{MAX_DELAY_SECONDS / 86400:g} days ahead"
                )
        return new_job_draft(
            spec.name,
            spec.payload,
            queue=queue,
            priority=spec.priority or Priority.normal,
            delay=spec.delay,
            run_at_ms=run_at_ms,
            max_retries=self.settings.MAX_RETRIES if spec.max_retries is None else spec.max_retries,
            timeout=self.settings.JOB_TIMEOUT if spec.timeout is None else spec.timeout,
        )

    async def get_job(self, job_id: str) -> Job:
        """Return the job with this id. Raises JobNotFound."""
        return await self.backend.get_job(job_id)

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        status: JobStatus | str | None = None,
        name: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> JobPage:
        """Return one page of the jobs of ``queue`` (default QUEUE) that match the filters.

        Pass the page's ``next_cursor`` to get the next one. Raises BananasError for an invalid
        cursor or limit.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise BananasError(f"invalid limit {limit}: expected 1 to {MAX_LIST_LIMIT}")
        try:
            return await self.backend.list_jobs(
                queue or self.settings.QUEUE,
                status=None if status is None else JobStatus(status),
                name=name,
                cursor=cursor,
                limit=limit,
            )
        except ValueError as error:
            raise BananasError(str(error)) from error

    async def counts(self) -> QueueCounts:
        """Return the number of jobs in each place of the configured queue."""
        return await self.backend.counts()

    async def all_counts(self) -> list[QueueCounts]:
        """Return the counts of every queue in use, and of the configured one even when empty."""
        names = set(await self.backend.queue_names()) | {self.settings.QUEUE}
        return [await self.backend.queue_counts(queue) for queue in sorted(names)]

    async def workers(self) -> list[WorkerInfo]:
        """Return the live workers, most recent heartbeat first."""
        return await self.backend.list_workers()

    async def cancel(self, job_id: str) -> tuple[str, Job]:
        """Cancel a pending or scheduled job, or request that a running one stops.

        Returns ``("cancelled" or "requested" or "finished", job)``: "finished" means the
        job had already completed, died or been cancelled, and nothing changed.
        Raises JobNotFound.
        """
        outcome, job = await self.backend.cancel_job(job_id)
        if outcome == "cancelled":
            logger.info("Cancelled job %s:%s", job.id, job.name)
        elif outcome == "requested":
            logger.info("Requested cancellation of running job %s:%s", job.id, job.name)
        return outcome, job

    async def cancel_requested_at(self, job: Job) -> datetime | None:
        """Return when cancellation of a running job was requested, or None."""
        if job.status != JobStatus.processing:
            return None
        requested = await self.backend.cancel_requested_at(job)
        return None if requested is None else datetime.fromtimestamp(requested / 1000, timezone.utc)

    async def retry_dead(self, job_id: str) -> Job:
        """Move a dead job back to its queue with fresh retries. Raises JobNotFound or JobConflict."""
        job = await self.backend.retry_dead(job_id)
        logger.info("Returned dead job %s:%s to queue %s", job.id, job.name, job.queue)
        return job

    async def requeue_dead(self, *, queue: str | None = None, name: str | None = None) -> int:
        """Move every dead job of ``queue`` (only handler ``name``'s, if given) back. Returns how many."""
        queue = queue or self.settings.QUEUE
        moved = await self.backend.sweep_dead(queue, "requeue", name)
        logger.info("Requeued %d dead jobs of queue %s (name filter: %s)", moved, queue, name or "none")
        return moved

    async def purge_dead(self, *, queue: str | None = None, name: str | None = None) -> int:
        """Delete every dead job of ``queue`` (only handler ``name``'s, if given). Returns how many."""
        queue = queue or self.settings.QUEUE
        deleted = await self.backend.sweep_dead(queue, "delete", name)
        logger.info("Deleted %d dead jobs of queue %s (name filter: %s)", deleted, queue, name or "none")
        return deleted

    async def wait(self, job_id: str, timeout: float | str) -> Job:
        """Wait up to ``timeout`` for the job to complete, die or be cancelled.

        ``timeout`` is a number of seconds or a duration such as ``"30s"``. Returns the job as
        stored then; check its status. Raises JobNotFound, or BananasError for an invalid timeout.
        """
        try:
            seconds = parse_duration(timeout)
        except ValueError as error:
            raise BananasError(str(error)) from error
        return await self.backend.wait_for_job(job_id, seconds)


# A SyncClient left open hung the interpreter at exit, in the teardown of its event loop's
# thread. atexit handlers run before that teardown and after the other threads have ended.
_open_sync_clients: weakref.WeakSet[SyncClient] = weakref.WeakSet()


@atexit.register
def _close_open_sync_clients() -> None:
    for client in list(_open_sync_clients):
        try:
            client.close()
        except Exception:
            logger.exception("Failed to close a SyncClient at exit")


class SyncClient:
    """``Client`` for synchronous code: each method blocks until the operation is done.

    It runs an event loop in a background thread. Use it as ``with SyncClient(settings) as
    client:`` or call ``close()``.
    """

    def __init__(self, settings: Settings, **options: Any) -> None:
        self._portal_manager = start_blocking_portal()
        self._portal = self._portal_manager.__enter__()
        self._closed = False
        self._closing = threading.Lock()
        try:
            self._client = Client(settings, **options)
        except BaseException:
            self._portal_manager.__exit__(None, None, None)
            raise
        _open_sync_clients.add(self)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the backend's connections and stop the background event loop; repeats do nothing."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        _open_sync_clients.discard(self)
        try:
            self._portal.call(self._client.backend.close)
        finally:
            self._portal_manager.__exit__(None, None, None)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._portal.call(partial(method, *args, **kwargs))

    def submit(self, name: str, payload: dict[str, Any] | None = None, **options: Any) -> Job:
        """Enqueue a job; the options are those of ``Client.submit``."""
        return self._call(self._client.submit, name, payload, **options)

    def submit_batch(self, specs: list[JobSpec]) -> list[Submission]:
        """Enqueue jobs of one queue all at once, as ``Client.submit_batch``."""
        return self._call(self._client.submit_batch, specs)

    def get_job(self, job_id: str) -> Job:
        """Return the job with this id. Raises JobNotFound."""
        return self._call(self._client.get_job, job_id)

    def list_jobs(self, **filters: Any) -> JobPage:
        """Return one page of jobs; the filters are those of ``Client.list_jobs``."""
        return self._call(self._client.list_jobs, **filters)

    def all_counts(self) -> list[QueueCounts]:
        """Return the counts of every queue in use."""
        return self._call(self._client.all_counts)

    def workers(self) -> list[WorkerInfo]:
        """Return the live workers."""
        return self._call(self._client.workers)

    def cancel(self, job_id: str) -> tuple[str, Job]:
        """Cancel a job, as ``Client.cancel``."""
        return self._call(self._client.cancel, job_id)

    def retry_dead(self, job_id: str) -> Job:
        """Move a dead job back to its queue."""
        return self._call(self._client.retry_dead, job_id)

    def requeue_dead(self, **filters: Any) -> int:
        """Move every dead job back, as ``Client.requeue_dead``."""
        return self._call(self._client.requeue_dead, **filters)

    def purge_dead(self, **filters: Any) -> int:
        """Delete every dead job, as ``Client.purge_dead``."""
        return self._call(self._client.purge_dead, **filters)

    def wait(self, job_id: str, timeout: float | str) -> Job:
        """Wait for the job to finish, as ``Client.wait``."""
        return self._call(self._client.wait, job_id, timeout)


def _check_types(spec: JobSpec, where: str) -> None:
    """Raise BananasError unless the name and options of ``spec`` have the types a job stores."""
    _check_names(spec, where)
    _check_options(spec, where)


def _check_names(spec: JobSpec, where: str) -> None:
    # A name that no plugin could register would only ever reach the dead letter queue.
    if not isinstance(spec.name, str) or not HANDLER_NAME.fullmatch(spec.name):
        raise BananasError(
            f"invalid name {spec.name!r} of {where}: expected a handler name of {HANDLER_NAME_RULE}"
        )

    for option, value in (("queue", spec.queue), ("unique key", spec.unique_key)):
        if value is not None and not isinstance(value, str):
            raise BananasError(f"invalid {option} {value!r} of {where}: expected a string")

    for key in spec.payload:
        if not isinstance(key, str):
            raise BananasError(
                f"invalid payload of {where}: its key {key!r} is of type {type(key).__name__}; "
                "the keys of a payload are strings"
            )


def _check_options(spec: JobSpec, where: str) -> None:
    if spec.run_at is not None and not isinstance(spec.run_at, datetime):
        raise BananasError(
            f"invalid run_at {spec.run_at!r} of {where}: expected a datetime, such as "
            "datetime.fromisoformat('2027-01-01T00:00:00+00:00')"
        )

    priority = spec.priority
    if priority is not None and not (isinstance(priority, str) and priority in _PRIORITY_NAMES):
        raise BananasError(f"invalid priority {priority!r} of {where}: expected high, normal or low")

    retries = spec.max_retries
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool)):
        raise BananasError(f"invalid max_retries {retries!r} of {where}: expected a whole number")

    if not isinstance(spec.delay, (int, float)) or isinstance(spec.delay, bool):
        raise BananasError(f"invalid delay {spec.delay!r} of {where}: expected a number of seconds")
    timeout = spec.timeout
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)):
        raise BananasError(f"invalid timeout {timeout!r} of {where}: expected a number of seconds")


# Priority members compare equal to their values, so this matches either.
_PRIORITY_NAMES = frozenset(priority.value for priority in Priority)

# Built once: json.dumps builds a new encoder per call when given options.
_STRICT_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _check_json(payload: dict[str, Any], where: str, max_bytes: int) -> None:
    """Raise BananasError unless ``payload`` is strict JSON that every reader can handle.

    Raises PayloadTooLarge when its JSON is over ``max_bytes`` (MAX_PAYLOAD_BYTES).
    """
    try:
        # NaN and infinity are not JSON, and a lone surrogate is not UTF-8.
        encoded = _STRICT_JSON.encode(payload)
        size = len(encoded.encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as error:
        # The encoder fails on a payload that contains itself, or one nested thousands of levels.
        _check_depth(payload, where)
        found = _find_non_json(payload)
        reason = f"{found[0]} is {found[1]}" if found else str(error)
        raise BananasError(f"invalid payload of {where}: {reason}; send plain JSON values") from None
    # A payload nested deeper than the limit has more brackets than that in its JSON, so most
    # payloads skip the walk, which costs more than the encoding.
    if encoded.count("{") + encoded.count("[") > MAX_PAYLOAD_DEPTH:
        _check_depth(payload, where)
    if size > max_bytes:
        raise PayloadTooLarge(
            f"invalid payload of {where}: {size} bytes as JSON, over MAX_PAYLOAD_BYTES={max_bytes}; "
            "keep large data elsewhere (a file or an object store) and send its address, "
            "or raise MAX_PAYLOAD_BYTES"
        )


# The types a payload may hold, and those its keys may have (the json module writes the
# others of these as strings).
_JSON_VALUES = (str, int, float, bool, type(None), dict, list, tuple)
_JSON_KEYS = (str, int, float, bool, type(None))


def _find_non_json(payload: dict[str, Any]) -> tuple[str, str] | None:
    """Return the path of the first value in ``payload`` that is not strict JSON, and why."""
    stack: list[tuple[str, Any]] = [("payload", payload)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path, f"{value!r}, which is not a JSON number"
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                return path, f"a string with a lone surrogate at character {error.start}, which is not UTF-8"
        elif not isinstance(value, _JSON_VALUES):
            return path, f"of type {type(value).__name__}, which is not a JSON type"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if not isinstance(key, _JSON_KEYS):
                    return path, f"an object with a key of type {type(key).__name__}, which JSON cannot hold"
                stack.append((f"{path}.{key}", item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{index}]", item) for index, item in reversed(list(enumerate(value))))
    return None


def _check_depth(payload: dict[str, Any], where: str) -> None:
    if _depth(payload, MAX_PAYLOAD_DEPTH) > MAX_PAYLOAD_DEPTH:
        raise BananasError(
            f"invalid payload of {where}: nested more than {MAX_PAYLOAD_DEPTH} levels deep, "
            "or it contains itself; flatten it"
        )


def _depth(value: Any, limit: int) -> int:
    """Return how deep ``value`` nests, or a level beyond ``limit`` as soon as one is found.

    Stopping there also ends the walk of a container that contains itself.
    """
    # Iterative, so that a very deep payload cannot exhaust the stack here. Only containers
    # go on the stack, so a flat payload costs one pass over its values.
    # Tuples count, because the json module writes them as arrays.
    if not isinstance(value, (dict, list, tuple)):
        return 0
    deepest = 0
    stack = [(value, 1)]
    while stack:
        current, level = stack.pop()
        if level > limit:
            return level
        deepest = max(deepest, level)
        for item in current.values() if isinstance(current, dict) else current:
            if isinstance(item, (dict, list, tuple)):
                stack.append((item, level + 1))
    return deepest
