"""The Redis backend: priority lists, sorted sets and Lua scripts, one hash tag per queue."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bananas_core.backends.base import Backend, QueueCounts
from bananas_core.backends.keys import WAKEUP_TOKENS_MAX, QueueKeys, queues_key
from bananas_core.errors import BackendError, JobNotFound
from bananas_core.job import Job, JobError, now_ms
from bananas_core.settings import redact_url

logger = logging.getLogger(__name__)

T = TypeVar("T")

SOCKET_TIMEOUT = 10.0  # seconds to connect or to wait for a reply before a command fails


def _translate_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    # Callers catch BackendError whatever went wrong inside redis-py.
    @functools.wraps(method)
    async def wrapper(self: RedisBackend, *args: Any, **kwargs: Any) -> T:
        try:
            return await method(self, *args, **kwargs)
        except RedisError as error:
            raise BackendError(
                f"Redis at {self.display_url} failed in {method.__name__}: "
                f"{type(error).__name__}: {error}"
            ) from error

    return wrapper


def _load_script(name: str) -> str:
    return resources.files("bananas_core.backends").joinpath(f"lua/{name}.lua").read_text()


class RedisBackend(Backend):
    """Jobs of one named queue in Redis, under ``{prefix}:{queue}:``."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, queue: str, display_url: str) -> None:
        self.client = client
        self.prefix = prefix
        self.queue = queue
        self.keys = QueueKeys(prefix, queue)
        self.display_url = display_url
        self._queue_known = False
        self._scripts = {
            name: client.register_script(_load_script(name))
            for name in (
                "enqueue",
                "claim",
                "complete",
                "fail",
                "release",
                "heartbeat",
                "promote",
                "requeue_expired",
                "purge",
            )
        }

    @classmethod
    def from_url(cls, url: str, *, prefix: str, queue: str) -> RedisBackend:
        """Connect to the Redis server at ``url`` (redis://, rediss:// or unix://)."""
        # Timeouts turn a network cut, where no error ever arrives, into a BackendError that
        # the services retry with backoff. Blocking waits use shorter timeouts than these.
        options: dict[str, Any] = {}
        if not url.startswith("unix://"):
            options["socket_keepalive"] = True  # Unix socket connections reject this option
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            health_check_interval=15,
            socket_connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            **options,
        )
        return cls(client, prefix=prefix, queue=queue, display_url=redact_url(url))

    @_translate_errors
    async def enqueue(self, job: Job) -> tuple[Job, bool]:
        k = self.keys
        if not self._queue_known:
            await self.client.sadd(queues_key(self.prefix), self.queue)
            self._queue_known = True

        run_at = 0
        if job.run_at is not None:
            run_at = round(job.run_at.timestamp() * 1000)
        existing = await self._scripts["enqueue"](
            keys=[k.jobs, k.for_priority(job.priority), k.scheduled, k.wakeup],
            args=[job.id, job.to_record(), run_at, WAKEUP_TOKENS_MAX],
        )
        if existing:
            return Job.from_record(existing), False
        return job, True

    @_translate_errors
    async def claim(self, count: int, worker: str, lease: float) -> list[Job]:
        k = self.keys
        records = await self._scripts["claim"](
            keys=[*k.priority_lists, k.processing, k.leases, k.jobs, k.wakeup],
            args=[count, now_ms(), round(lease * 1000), worker, WAKEUP_TOKENS_MAX],
        )
        return [Job.from_record(record) for record in records]

    @_translate_errors
    async def wait_for_jobs(self, timeout: float) -> None:
        # BLPOP takes whole or fractional seconds; 0 would block forever.
        await self.client.blpop([self.keys.wakeup], timeout=max(timeout, 0.01))

    @_translate_errors
    async def complete(self, job: Job, result: object) -> bool:
        k = self.keys
        encoded = "" if result is None else json.dumps(result)
        done = await self._scripts["complete"](
            keys=[k.processing, k.leases, k.jobs, k.completed],
            args=[job.id, job.token, now_ms(), encoded],
        )
        return bool(done)

    @_translate_errors
    async def fail(self, job: Job, error: JobError, retry_at_ms: int | None) -> bool:
        k = self.keys
        done = await self._scripts["fail"](
            keys=[k.processing, k.leases, k.jobs, k.scheduled, k.dead,
                  k.for_priority(job.priority), k.wakeup],
            args=[job.id, job.token, now_ms(), error.model_dump_json(),
                  -1 if retry_at_ms is None else retry_at_ms, WAKEUP_TOKENS_MAX],
        )
        return bool(done)

    @_translate_errors
    async def release(self, job: Job) -> bool:
        k = self.keys
        done = await self._scripts["release"](
            keys=[k.processing, k.leases, k.jobs, k.for_priority(job.priority), k.wakeup],
            args=[job.id, job.token, WAKEUP_TOKENS_MAX],
        )
        return bool(done)

    @_translate_errors
    async def heartbeat(self, jobs: list[Job], lease: float) -> list[str]:
        if not jobs:
            return []
        args: list[object] = [now_ms() + round(lease * 1000)]
        for job in jobs:
            args += [job.id, job.token]
        return list(await self._scripts["heartbeat"](
            keys=[self.keys.processing, self.keys.leases], args=args
        ))

    @_translate_errors
    async def promote_due(self, limit: int) -> int:
        k = self.keys
        return int(await self._scripts["promote"](
            keys=[k.scheduled, *k.priority_lists, k.jobs, k.wakeup],
            args=[now_ms(), limit, WAKEUP_TOKENS_MAX],
        ))

    @_translate_errors
    async def requeue_expired(self, limit: int, poison_threshold: int) -> list[tuple[str, str]]:
        k = self.keys
        flat = await self._scripts["requeue_expired"](
            keys=[k.processing, k.leases, *k.priority_lists, k.jobs, k.wakeup, k.dead],
            args=[now_ms(), limit, WAKEUP_TOKENS_MAX, poison_threshold],
        )
        return list(zip(flat[::2], flat[1::2]))

    @_translate_errors
    async def purge_finished(self, completed_ttl: float, dead_ttl: float, limit: int) -> int:
        k = self.keys
        now = now_ms()
        return int(await self._scripts["purge"](
            keys=[k.completed, k.dead, k.jobs],
            args=[now - round(completed_ttl * 1000), now - round(dead_ttl * 1000), limit],
        ))

    @_translate_errors
    async def get_job(self, job_id: str) -> Job:
        record = await self.client.hget(self.keys.jobs, job_id)
        if record is None:
            # The job may belong to another named queue under the same prefix.
            for queue in sorted(await self.client.smembers(queues_key(self.prefix))):
                if queue != self.queue:
                    record = await self.client.hget(QueueKeys(self.prefix, queue).jobs, job_id)
                    if record is not None:
                        break
        if record is None:
            raise JobNotFound(job_id)
        return Job.from_record(record)

    @_translate_errors
    async def counts(self) -> QueueCounts:
        k = self.keys
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.llen(k.high).llen(k.normal).llen(k.low)
            pipe.zcard(k.scheduled).zcard(k.processing).zcard(k.completed).zcard(k.dead)
            high, normal, low, scheduled, processing, completed, dead = await pipe.execute()
        return QueueCounts(self.queue, high, normal, low, scheduled, processing, completed, dead)

    @_translate_errors
    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except RedisError:
            logger.warning("Closing the Redis connection to %s failed; ignored", self.display_url)

