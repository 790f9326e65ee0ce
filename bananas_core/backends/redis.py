"""The Redis backend: priority lists, sorted sets and Lua scripts, one hash tag per queue."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import hiredis
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - redis-py depends on async-timeout before 3.11.3
    from async_timeout import timeout as _deadline

from bananas_core.backends.base import Backend, JobPage, QueueCounts, Recorded, RunOutcome, WorkerInfo
from bananas_core.backends.keys import (
    WAKEUP_TOKENS_MAX,
    QueueKeys,
    cancel_requests_key,
    cancelled_key,
    finished_channel,
    idempotency_key,
    job_metrics_key,
    queues_key,
    rate_limit_key,
    worker_info_key,
    workers_key,
)
from bananas_core.errors import BackendError, ConfigError, JobConflict, JobNotFound
from bananas_core.job import Job, JobError, JobStatus, NewJob, Priority, now_ms
from bananas_core.metrics import RUN_SECONDS_BUCKETS, WAIT_SECONDS_BUCKETS, histogram_fields
from bananas_core.settings import redact_url

logger = logging.getLogger(__name__)

T = TypeVar("T")

SOCKET_TIMEOUT = 10.0  # seconds to connect or to wait for a reply before a command fails
INTERRUPT_TTL = 60.0  # seconds an interrupt token waits for its worker
# Seconds between a process's additions of a queue to the set of queues in use when it submits
# through the submit scripts. A Redis that lost its data learns the queue again from the next
# such submit after this time. Plain transactions add the queue every time.
QUEUE_SET_REFRESH = 10.0
LEASE_SCAN_CHUNK = 500  # jobs read per round trip when a worker looks for the leases it holds


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


@dataclasses.dataclass(frozen=True)
class _Script:
    """The source of a Lua script and its SHA1 digest, the name EVALSHA calls it by."""

    source: str

    @functools.cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


class _SubmitFrame:
    """The key names and fixed commands of a queue's submit transaction, built once per queue.

    Before its send, a single submit runs only Python code, and with gaps between submits
    that code runs cold. Building these once leaves only the records and pushes to pack.
    """

    def __init__(self, keys: QueueKeys, prefix: str) -> None:
        self.queue = keys.queue
        self.listed_at = float("-inf")  # time.monotonic() of the last addition to the queue set
        # Outside the transaction, because the set of queues has no hash tag.
        self.list_queue = hiredis.pack_command(("SADD", queues_key(prefix), keys.queue))
        self.jobs = keys.jobs
        self.scheduled = keys.scheduled
        self.lists = {priority: keys.for_priority(priority) for priority in Priority}
        self.multi = hiredis.pack_command(("MULTI",))
        self.exec = hiredis.pack_command(("EXEC",))
        self.wake_and_exec = b"".join([
            hiredis.pack_command(("RPUSH", keys.wakeup, "1")),
            hiredis.pack_command(("LTRIM", keys.wakeup, -WAKEUP_TOKENS_MAX, -1)),
            self.exec,
        ])


class RedisBackend(Backend):
    """Jobs of one named queue in Redis, under ``{prefix}:{queue}:``."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, queue: str, display_url: str) -> None:
        self.client = client
        self.prefix = prefix
        self.queue = queue
        self.keys = QueueKeys(prefix, queue)
        self.display_url = display_url
        self._finished_channel = finished_channel(prefix, queue)
        self._exchange_keys = [
            *self.keys.priority_lists, self.keys.processing, self.keys.leases, self.keys.jobs,
            self.keys.wakeup, self.keys.completed, self.keys.scheduled, self.keys.dead,
            cancel_requests_key(prefix, queue), cancelled_key(prefix, queue),
        ]
        self._scripts: dict[str, _Script] = {}  # loaded from the package on first use
        self._idle_connections: list[Any] = []  # for _round_trip; redis-py's pool keeps the rest
        # By queue name. A queue gets its frame when it is first added to the set of queues in use.
        self._submit_frames: dict[str, _SubmitFrame] = {}

    def _script(self, name: str) -> _Script:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = _Script(_load_script(name))
        return script

    def _evalsha(self, name: str, keys: list[str], args: list[object]) -> tuple[object, ...]:
        """Return the EVALSHA command that runs the script ``name``."""
        return ("EVALSHA", self._script(name).sha, len(keys), *keys, *args)

    async def _eval(self, name: str, keys: list[str], args: list[object]) -> Any:
        """Run the script ``name`` with EVALSHA, loading it first if the server lacks it."""
        command = self._evalsha(name, keys, args)
        try:
            return await self._round_trip(command)
        except NoScriptError:
            # A restarted or flushed server has forgotten its scripts.
            await self.client.script_load(self._script(name).source)
            return await self._round_trip(command)

    async def _round_trip(self, command: tuple[object, ...]) -> Any:
        """Send one command on a connection of the backend's own and return the reply."""
        [reply] = await self._round_trip_all([command])
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _round_trip_all(self, commands: list[tuple[object, ...]]) -> list[Any]:
        """Send commands in one write on a connection of the backend's own; return the replies.

        An error reply comes back as its ResponseError in its place, after every reply was read.

        Every job passes through two scripts. With ``execute_command``, a script call took 76 us
        of client CPU in a warm loop here, against 38 us on this path: redis-py adds its pool
        lock, retry wrapper and metrics. Connections here come from a plain list instead.

        NOTE: a command that fails here is not sent again: a script that may have run is
        reported to the caller as a BackendError, where redis-py would retry it.
        """
        connection = await self._send_all(commands)
        return await self._receive_all(connection, len(commands))

    async def _send_all(self, commands: list[tuple[object, ...]]) -> Any:
        """Send commands in one write on an idle connection, and return that connection."""
        connection = await self._idle_connection()
        packed = [_pack(connection, command) for command in commands]
        await _send(connection, packed[0] if len(packed) == 1 else b"".join(packed))
        return connection

    async def _idle_connection(self) -> Any:
        idle = self._idle_connections
        connection = idle.pop() if idle else self.client.connection_pool.make_connection()
        if connection.is_connected and await _closed_or_dirty(connection):
            # The server closed it while idle (a restart, or its idle timeout).
            await connection.disconnect()
        return connection

    async def _receive_all(self, connection: Any, count: int) -> list[Any]:
        """Read the replies of the last ``count`` commands sent, and return the connection."""
        replies = await _read_replies(connection, count)
        self._idle_connections.append(connection)
        return replies

    @classmethod
    def from_url(cls, url: str, *, prefix: str, queue: str) -> RedisBackend:
        """Connect to the Redis server at ``url`` (redis://, rediss:// or unix://).

        Raises ConfigError naming the URL, without its password, when it is malformed.
        """
        _check_url(url)
        # Timeouts turn a network cut, where no error ever arrives, into a BackendError that
        # the services retry with backoff. Blocking waits use shorter timeouts than these.
        options: dict[str, Any] = {}
        if not url.startswith("unix://"):
            options["socket_keepalive"] = True  # Unix socket connections reject this option
        try:
            client = aioredis.Redis.from_url(
                url,
                decode_responses=True,
                health_check_interval=15,
                socket_connect_timeout=SOCKET_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
                **options,
            )
        except ValueError as error:
            raise ConfigError(
                f"invalid REDIS_URL={redact_url(url)!r}: {error}; see redis-py's URL format"
            ) from error
        return cls(client, prefix=prefix, queue=queue, display_url=redact_url(url))

    @_translate_errors
    async def enqueue(self, job: Job) -> tuple[Job, bool]:
        # One job is a batch of one, so there is one script that stores jobs.
        [(stored, created)] = await self.submit_jobs([job], [None], 0)
        return stored, created

    @_translate_errors
    async def exchange(
        self, outcomes: list[RunOutcome], count: int, worker: str, lease: float
    ) -> tuple[list[Recorded], list[Job]]:
        args = self._exchange_args(outcomes, count, worker, lease)
        recorded, records = await self._eval("exchange", self._exchange_keys, args)
        return [Recorded(flag) for flag in recorded], [Job.from_record(record) for record in records]

    def _exchange_args(
        self, outcomes: list[RunOutcome], count: int, worker: str, lease: float
    ) -> list[object]:
        encoded = orjson.dumps([
            (
                outcome.job.id, outcome.job.token, outcome.kind, outcome.value,
                round(outcome.retry_delay * 1000), outcome.job.retries,
            )
            for outcome in outcomes
        ])
        return [round(lease * 1000), worker, WAKEUP_TOKENS_MAX, self._finished_channel, count, encoded]

    async def claim(self, count: int, worker: str, lease: float) -> list[Job]:
        _, jobs = await self.exchange([], count, worker, lease)
        return jobs

    @_translate_errors
    async def wait_for_jobs(self, timeout: float) -> None:
        # BLPOP takes whole or fractional seconds; 0 would block forever.
        await self.client.blpop([self.keys.wakeup], timeout=max(timeout, 0.01))

    @_translate_errors
    async def wait_and_lease(self, timeout: float, count: int, worker: str, lease: float) -> list[Job]:
        # Redis runs a connection's commands in order, so the lease sent behind BLPOP runs the
        # moment BLPOP returns: one round trip from the wake-up to the leased jobs.
        lease_command = self._evalsha(
            "exchange", self._exchange_keys, self._exchange_args([], count, worker, lease)
        )
        waited = [self.keys.wakeup, self.keys.interrupt(worker)]
        woken, leased = await self._round_trip_all([("BLPOP", *waited, max(timeout, 0.01)), lease_command])
        if isinstance(leased, NoScriptError):
            # BLPOP has run by now; the server forgot its scripts, so lease without waiting.
            _, jobs = await self.exchange([], count, worker, lease)
            return jobs
        if isinstance(leased, ResponseError):
            raise leased
        _, records = leased
        if isinstance(woken, ResponseError) and not records:
            # A wait that fails at once (a wake-up key of another type) must not spin.
            raise woken
        return [Job.from_record(record) for record in records]

    @_translate_errors
    async def interrupt_wait(self, worker: str) -> None:
        key = self.keys.interrupt(worker)
        async with self.client.pipeline(transaction=True) as pipe:
            # The token expires, in case the worker was not waiting and never takes it.
            pipe.rpush(key, "1").pexpire(key, round(INTERRUPT_TTL * 1000))
            await pipe.execute()

    async def complete(self, job: Job, result: object) -> bool:
        encoded = "" if result is None else json.dumps(result)
        [recorded], _ = await self.exchange([RunOutcome(job, "completed", encoded)], 0, "", 0)
        return bool(recorded)

    async def fail(self, job: Job, error: JobError, retry_delay: float | None) -> bool:
        if retry_delay is None:
            outcome = RunOutcome(job, "dead", error.model_dump_json())
        else:
            outcome = RunOutcome(job, "retry", error.model_dump_json(), retry_delay)
        [recorded], _ = await self.exchange([outcome], 0, "", 0)
        return bool(recorded)

    @_translate_errors
    async def release(self, job: Job) -> Recorded:
        k = self.keys
        done = await self._eval(
            "release",
            keys=[
                k.processing, k.leases, k.jobs, k.for_priority(job.priority), k.wakeup,
                cancel_requests_key(self.prefix, self.queue), cancelled_key(self.prefix, self.queue),
            ],
            args=[job.id, job.token, WAKEUP_TOKENS_MAX, self._finished_channel],
        )
        return Recorded(done)

    @_translate_errors
    async def heartbeat(self, jobs: list[Job], lease: float) -> list[str]:
        if not jobs:
            return []
        args: list[object] = [round(lease * 1000)]
        for job in jobs:
            args += [job.id, job.token]
        return list(await self._eval(
            "heartbeat",
            keys=[self.keys.processing, self.keys.leases], args=args
        ))

    @_translate_errors
    async def leased_to(self, worker: str) -> list[Job]:
        # The processing set contains the jobs that every worker runs or prefetched, so it is
        # as large as their slots together. This runs only after a failed call.
        k = self.keys
        ids = await self.client.zrange(k.processing, 0, -1)
        leased: list[Job] = []
        for start in range(0, len(ids), LEASE_SCAN_CHUNK):
            chunk = ids[start:start + LEASE_SCAN_CHUNK]
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(k.jobs, chunk).hmget(k.leases, chunk)
                records, tokens = await pipe.execute()
            for record, token in zip(records, tokens):
                # Most records name other workers: skip those before the cost of decoding.
                if record is None or token is None or worker not in record:
                    continue
                job = _decode_job(record)
                if job and job.worker == worker and job.status is JobStatus.processing and str(job.token) == token:
                    leased.append(job)
        return leased

    @_translate_errors
    async def set_progress(self, job: Job, fraction: float, message: str | None) -> bool:
        """Store a running job's progress. Returns False if the job's lease was lost."""
        done = await self._eval(
            "progress",
            keys=[self.keys.leases, self.keys.jobs], args=[job.id, job.token, fraction, message or ""]
        )
        return bool(done)

    @_translate_errors
    async def promote_due(self, limit: int) -> int:
        k = self.keys
        return int(await self._eval(
            "promote",
            keys=[k.scheduled, *k.priority_lists, k.jobs, k.wakeup],
            args=[limit, WAKEUP_TOKENS_MAX],
        ))

    @_translate_errors
    async def requeue_expired(self, limit: int, poison_threshold: int) -> list[tuple[str, str]]:
        k = self.keys
        flat = await self._eval(
            "requeue_expired",
            keys=[k.processing, k.leases, *k.priority_lists, k.jobs, k.wakeup, k.dead,
                  cancel_requests_key(self.prefix, self.queue), cancelled_key(self.prefix, self.queue)],
            args=[limit, WAKEUP_TOKENS_MAX, poison_threshold, finished_channel(self.prefix, self.queue)],
        )
        return list(zip(flat[::2], flat[1::2]))

    @_translate_errors
    async def purge_finished(self, completed_ttl: float, dead_ttl: float, limit: int) -> int:
        k = self.keys
        return int(await self._eval(
            "purge",
            keys=[k.completed, k.dead, k.jobs],
            args=[round(completed_ttl * 1000), round(dead_ttl * 1000), limit],
        ))

    @_translate_errors
    async def get_job(self, job_id: str) -> Job:
        record = await self.client.hget(self.keys.jobs, job_id)
        if record is None:
            # The job may belong to another named queue under the same prefix.
            for queue in await self.queue_names():
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
            while self._idle_connections:
                await self._idle_connections.pop().disconnect()
            await self.client.aclose()
        except RedisError:
            logger.warning("Closing the Redis connection to %s failed; ignored", self.display_url)


    # Operations of the API, the client and the CLI.

    async def _batch_frame(self, batch: list[Job] | list[NewJob], *, listed: bool = False) -> _SubmitFrame:
        """Return the submit frame of the queue that every job of ``batch`` names.

        Unless the caller adds the queue to the set of queues in use itself (``listed``), the
        first call for a queue adds it, and so does a call QUEUE_SET_REFRESH or more after
        that: the set may be gone with the rest of the data.
        """
        queue = batch[0].queue
        if any(job.queue != queue for job in batch):
            raise ValueError("every job of one batch must name the same queue")
        frame = self._submit_frames.get(queue)
        if frame is None:
            frame = self._submit_frames[queue] = _SubmitFrame(QueueKeys(self.prefix, queue), self.prefix)
        now = time.monotonic()
        if not listed and now - frame.listed_at >= QUEUE_SET_REFRESH:
            await self.client.sadd(queues_key(self.prefix), queue)
            frame.listed_at = now
        return frame

    @_translate_errors
    async def submit_jobs(
        self, jobs: list[Job], unique_keys: list[str | None], window: float
    ) -> list[tuple[Job, bool]]:
        if not jobs:
            return []
        queue = (await self._batch_frame(jobs)).queue

        k = QueueKeys(self.prefix, queue)
        if len(jobs) == 1:
            return [await self._submit_one(k, jobs[0], unique_keys[0], window)]
        keys = [k.jobs, k.high, k.normal, k.low, k.scheduled, k.wakeup]
        list_index = {"high": 2, "normal": 3, "low": 4}
        placements: list[tuple[int, int, int]] = []
        stored: list[str] = []
        for job, unique_key in zip(jobs, unique_keys):
            unique_index = 0
            if unique_key is not None:
                keys.append(idempotency_key(self.prefix, queue, unique_key))
                unique_index = len(keys)
            placements.append((_due_ms(job), list_index[job.priority.value], unique_index))
            stored += [job.id, job.to_record()]

        args = [round(window * 1000), WAKEUP_TOKENS_MAX, orjson.dumps(placements), *stored]
        results = await self._eval("submit", keys=keys, args=args)
        # A stored job is the one sent, so the script returns only an existing job's record.
        return [
            (job, True) if result == 1 else (Job.from_record(result), False)
            for job, result in zip(jobs, results)
        ]

    @_translate_errors
    async def submit_new_jobs(self, drafts: list[NewJob]) -> list[Job]:
        """Store the jobs in one MULTI/EXEC transaction, and build their models meanwhile.

        No lookup decides what to write, so plain commands do the work of the submit scripts.
        With 20 ms between single submits, as the pickup benchmark sends them, a transaction
        took 67 us from send to reply, submit_one.lua 109 us and a PING 42 us (raw socket, the
        local Redis 7.0). A worker can start the job while the models are built.
        """
        if not drafts:
            return []
        # Every transaction adds the queue to the set of queues in use, which costs Redis about
        # a microsecond and no round trip, so a Redis that lost its data relists it at once.
        frame = await self._batch_frame(drafts, listed=True)
        queue = frame.queue

        records: list[str] = []
        queued: dict[str, list[str]] = {}
        scheduled: list[object] = []
        for draft in drafts:
            records += [draft.id, draft.to_record()]
            if draft.run_at_ms:
                scheduled += [draft.run_at_ms, draft.id]
            else:
                queued.setdefault(frame.lists[draft.priority], []).append(draft.id)

        commands: list[tuple[object, ...]] = [("HSET", frame.jobs, *records)]
        commands += [("RPUSH", key, *ids) for key, ids in queued.items()]
        if scheduled:
            commands.append(("ZADD", frame.scheduled, *scheduled))
        connection = await self._idle_connection()
        # One token per call wakes one idle worker, as the submit scripts push. A worker that
        # leases its full share and finds work left wakes the next one.
        tail = frame.wake_and_exec if queued else frame.exec
        packed = [_pack(connection, command) for command in commands]
        await _send(connection, b"".join([frame.list_queue, frame.multi, *packed, tail]))
        reply_count = 1 + len(commands) + (4 if queued else 2)
        try:
            jobs = [draft.to_job() for draft in drafts]
        except Exception:
            # The Client checks every value the model rejects before it sends, so this is a
            # caller's bug. The jobs are stored and run, but the caller sees an error.
            logger.exception(
                "Stored jobs %s in queue %s but could not build their models",
                ", ".join(draft.id for draft in drafts), queue,
            )
            raise
        finally:
            replies = await self._receive_all(connection, reply_count)
        listed, *replies = replies
        if isinstance(listed, Exception):
            # The jobs are stored, so the caller must not see an error and submit them again.
            logger.warning("Could not add queue %s to the set of queues in use: %s", queue, listed)
        # Redis queues every command or rejects the whole transaction (EXECABORT). Inside EXEC,
        # an error reply (a key of the wrong type, set by hand) leaves the other writes made.
        results = replies[-1]
        for reply in [*replies[:-1], *(results if isinstance(results, list) else [results])]:
            if isinstance(reply, Exception):
                raise reply
        if results[0] != len(drafts):
            # NOTE: 128 random bits make this unreachable for ids from new_job_id. A taken id
            # means the new record replaced the stored one, and the id now waits in its queue twice.
            logger.error(
                "Stored %d of %d new jobs in queue %s as new: another job had one of their ids",
                results[0], len(drafts), queue,
            )
        return jobs

    async def _submit_one(
        self, k: QueueKeys, job: Job, unique_key: str | None, window: float
    ) -> tuple[Job, bool]:
        # One job goes through its own script, which takes only the keys it may write and no
        # placements to decode: a single submit took 122 us against 141 to 190 us.
        run_at = _due_ms(job)
        keys = [k.jobs, k.scheduled if run_at else k.for_priority(job.priority), k.wakeup]
        args: list[object] = [job.id, job.to_record(), run_at, WAKEUP_TOKENS_MAX]
        if unique_key is not None:
            keys.append(idempotency_key(self.prefix, job.queue, unique_key))
            args.append(round(window * 1000))
        result = await self._eval("submit_one", keys=keys, args=args)
        return (job, True) if result == 1 else (Job.from_record(result), False)

    @_translate_errors
    async def list_jobs(
        self,
        queue: str,
        *,
        status: JobStatus | None,
        name: str | None,
        cursor: str | None,
        limit: int,
    ) -> JobPage:
        # The cursor is Redis's HSCAN cursor and how many entries of the batch it returns were
        # already listed, because one HSCAN batch can hold more jobs than one page.
        scan_cursor, skip = _decode_cursor(cursor)
        jobs_key = QueueKeys(self.prefix, queue).jobs
        found: list[Job] = []
        # Scanning stops after this many entries even when the page is not full, so a filter
        # that matches little cannot make one request read the whole hash.
        budget = max(limit * 10, 1000)
        while True:
            next_cursor, batch = await self.client.hscan(jobs_key, scan_cursor, count=max(limit, 100))
            entries = list(batch.items())
            for index in range(skip, len(entries)):
                job = _decode_job(entries[index][1])
                if job is None or (status is not None and job.status != status):
                    continue
                if name is not None and job.name != name:
                    continue
                found.append(job)
                if len(found) == limit:
                    if index + 1 < len(entries):
                        return JobPage(found, _encode_cursor(scan_cursor, index + 1))
                    return JobPage(found, None if next_cursor == 0 else _encode_cursor(next_cursor, 0))
            budget -= len(entries)
            if next_cursor == 0:
                return JobPage(found, None)
            scan_cursor, skip = next_cursor, 0
            if budget <= 0:
                return JobPage(found, _encode_cursor(scan_cursor, 0))

    @_translate_errors
    async def queue_names(self) -> list[str]:
        # The queues this process submitted to count too: after a loss of data, the set lacks
        # them until their next submit.
        listed = await self.client.smembers(queues_key(self.prefix))
        return sorted({*listed, *self._submit_frames})

    @_translate_errors
    async def queue_counts(self, queue: str) -> QueueCounts:
        k = QueueKeys(self.prefix, queue)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.llen(k.high).llen(k.normal).llen(k.low)
            pipe.zcard(k.scheduled).zcard(k.processing).zcard(k.completed).zcard(k.dead)
            pipe.zcard(cancelled_key(self.prefix, queue))
            values = await pipe.execute()
        return QueueCounts(queue, *values)

    @_translate_errors
    async def oldest_pending(self, queue: str) -> dict[str, int]:
        k = QueueKeys(self.prefix, queue)
        oldest: dict[str, int] = {}
        for priority, list_key in zip(("high", "normal", "low"), k.priority_lists):
            # The head is the oldest entry: enqueues append, and only returned jobs go to the head.
            head = await self.client.lindex(list_key, 0)
            record = None if head is None else await self.client.hget(k.jobs, head)
            job = None if record is None else _decode_job(record)
            if job is not None:
                oldest[priority] = round(job.created_at.timestamp() * 1000)
        return oldest

    @_translate_errors
    async def cancel_job(self, job_id: str) -> tuple[str, Job]:
        job = await self.get_job(job_id)
        k = QueueKeys(self.prefix, job.queue)
        outcome, record = await self._eval(
            "cancel",
            keys=[k.jobs, k.high, k.normal, k.low, k.scheduled,
                  cancelled_key(self.prefix, job.queue), cancel_requests_key(self.prefix, job.queue)],
            args=[job_id, finished_channel(self.prefix, job.queue)],
        )
        if outcome == "missing":
            raise JobNotFound(job_id)
        return outcome, Job.from_record(record)

    @_translate_errors
    async def cancel_requests(self, jobs: list[Job]) -> list[str]:
        if not jobs:
            return []
        # One HMGET per queue: a worker's running jobs usually share one queue.
        by_queue: dict[str, list[str]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job.id)
        requested = []
        for queue, ids in by_queue.items():
            flags = await self.client.hmget(cancel_requests_key(self.prefix, queue), ids)
            requested += [job_id for job_id, flag in zip(ids, flags) if flag is not None]
        return requested

    @_translate_errors
    async def cancel_requested_at(self, job: Job) -> int | None:
        value = await self.client.hget(cancel_requests_key(self.prefix, job.queue), job.id)
        return None if value is None else int(value)

    @_translate_errors
    async def finish_cancelled(self, job: Job) -> bool:
        k = QueueKeys(self.prefix, job.queue)
        done = await self._eval(
            "finish_cancelled",
            keys=[k.processing, k.leases, k.jobs, cancelled_key(self.prefix, job.queue),
                  cancel_requests_key(self.prefix, job.queue)],
            args=[job.id, job.token, finished_channel(self.prefix, job.queue)],
        )
        return bool(done)

    @_translate_errors
    async def purge_cancelled(self, cancelled_ttl: float, limit: int) -> int:
        return int(await self._eval(
            "purge_cancelled",
            keys=[cancelled_key(self.prefix, self.queue), self.keys.jobs,
                  cancel_requests_key(self.prefix, self.queue), self.keys.processing],
            args=[round(cancelled_ttl * 1000), limit],
        ))

    @_translate_errors
    async def retry_dead(self, job_id: str) -> Job:
        job = await self.get_job(job_id)
        k = QueueKeys(self.prefix, job.queue)
        record = await self._eval(
            "retry_dead",
            keys=[k.jobs, k.dead, k.high, k.normal, k.low, k.wakeup],
            args=[job_id, WAKEUP_TOKENS_MAX],
        )
        if not record:
            current = await self.get_job(job_id)
            raise JobConflict(
                f"job {job_id!r} is {current.status.value}, not dead, so it cannot be retried",
                current,
            )
        return Job.from_record(record)

    @_translate_errors
    async def sweep_dead(self, queue: str, action: str, name: str | None) -> int:
        if action not in ("requeue", "delete"):
            raise ValueError(f"invalid action {action!r}: expected 'requeue' or 'delete'")
        k = QueueKeys(self.prefix, queue)
        changed = offset = 0
        while True:
            # Each call reads at most SWEEP_BATCH ids, which bounds how long one script runs.
            done, skipped, read = await self._eval(
                "sweep_dead",
                keys=[k.jobs, k.dead, k.high, k.normal, k.low, k.wakeup],
                args=[action, name or "", offset, SWEEP_BATCH, WAKEUP_TOKENS_MAX],
            )
            changed += done
            offset += skipped
            if read < SWEEP_BATCH:
                return changed

    @_translate_errors
    async def wait_for_job(self, job_id: str, timeout: float) -> Job:
        job = await self.get_job(job_id)
        if job.status in FINAL_STATUSES or timeout <= 0:
            return job

        deadline = anyio.current_time() + timeout
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(finished_channel(self.prefix, job.queue))
            # Read again after subscribing: a job that finished in between sent its message
            # before anyone listened.
            job = await self.get_job(job_id)
            while job.status not in FINAL_STATUSES:
                left = deadline - anyio.current_time()
                if left <= 0:
                    return job
                message = await pubsub.get_message(timeout=min(left, WAIT_RECHECK_SECONDS))
                if message is None or message.get("data") == job_id:
                    job = await self.get_job(job_id)
            return job
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()

    @_translate_errors
    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        now = now_ms()
        record = json.dumps({**dataclasses.asdict(info), "heartbeat_at": now})
        ttl_ms = max(round(ttl * 1000), 1)
        # Both keys share the {@workers} hash tag, so the transaction is valid on a cluster too.
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(worker_info_key(self.prefix, info.id), record, px=ttl_ms)
            pipe.zadd(workers_key(self.prefix), {info.id: now})
            pipe.zremrangebyscore(workers_key(self.prefix), "-inf", now - WORKER_INDEX_RETENTION_MS)
            await pipe.execute()

    @_translate_errors
    async def deregister_worker(self, worker_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(worker_info_key(self.prefix, worker_id))
            pipe.zrem(workers_key(self.prefix), worker_id)
            await pipe.execute()

    @_translate_errors
    async def list_workers(self) -> list[WorkerInfo]:
        ids = await self.client.zrevrange(workers_key(self.prefix), 0, -1)
        if not ids:
            return []
        records = await self.client.mget([worker_info_key(self.prefix, worker_id) for worker_id in ids])
        workers = []
        for record in records:
            # A registration whose TTL ran out is gone; its id leaves the index later.
            if record is not None:
                values = json.loads(record)
                workers.append(WorkerInfo(**{field.name: values.get(field.name) for field in dataclasses.fields(WorkerInfo)}))
        return workers

    @_translate_errors
    async def record_job(
        self, job: Job, outcome: str, run_seconds: float | None, wait_seconds: float | None
    ) -> None:
        key = job_metrics_key(self.prefix)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, f"outcome|{job.queue}|{job.name}|{outcome}", 1)
            for kind, seconds, buckets in (
                ("run", run_seconds, RUN_SECONDS_BUCKETS),
                ("wait", wait_seconds, WAIT_SECONDS_BUCKETS),
            ):
                if seconds is None:
                    continue
                for field in histogram_fields(kind, job.queue, job.name, seconds, buckets):
                    pipe.hincrby(key, field, 1)
                pipe.hincrbyfloat(key, f"{kind}_sum|{job.queue}|{job.name}", seconds)
            await pipe.execute()

    @_translate_errors
    async def add_job_metrics(self, increments: dict[str, float]) -> None:
        """Add a worker's batched counter increments to the shared job metrics hash."""
        if not increments:
            return
        key = job_metrics_key(self.prefix)
        async with self.client.pipeline(transaction=True) as pipe:
            for field, amount in increments.items():
                if float(amount).is_integer():
                    pipe.hincrby(key, field, int(amount))
                else:
                    pipe.hincrbyfloat(key, field, amount)
            await pipe.execute()

    @_translate_errors
    async def job_metrics(self) -> dict[str, float]:
        values = await self.client.hgetall(job_metrics_key(self.prefix))
        return {field: float(value) for field, value in values.items()}

    @_translate_errors
    async def rate_limit(self, client_id: str, rate: float, burst: int) -> float:
        admitted, wait_ms = await self._eval(
            "rate_limit",
            keys=[rate_limit_key(self.prefix, client_id)],
            args=[1000.0 / rate, burst],
        )
        return 0.0 if admitted else wait_ms / 1000


# Statuses after which a job never changes again, so a waiting caller can stop.
FINAL_STATUSES = frozenset({JobStatus.completed, JobStatus.dead, JobStatus.cancelled})

# A waiting request reads its job at least this often, because pub/sub drops messages sent
# while a subscriber reconnects. Every script that ends a job publishes, so this is a fallback.
WAIT_RECHECK_SECONDS = 1.0

SWEEP_BATCH = 500  # dead jobs one sweep_dead script call reads
# Worker ids stay in the index this long after their last heartbeat; their info key has
# long expired by then, so listings skip them.
WORKER_INDEX_RETENTION_MS = 86_400_000


def _encode_cursor(scan_cursor: int, skip: int) -> str:
    return f"{scan_cursor}-{skip}"


def _due_ms(job: Job) -> int:
    """Return when a delayed job is due, in ms since the epoch, or 0 for a job to run now."""
    return 0 if job.run_at is None else round(job.run_at.timestamp() * 1000)


def _pack(connection: Any, command: tuple[object, ...]) -> bytes:
    """Encode a command in Redis's protocol, as redis-py would, in an eighth of its time."""
    try:
        return hiredis.pack_command(command)
    except TypeError:
        # Types hiredis does not take get redis-py's own encoding, or its DataError.
        return b"".join(connection.pack_command(*command))


# asyncio pauses a connection's writes only above 64 KiB in its buffer, and one of the
# backend's own connections has no data buffered when a command is sent: a smaller write goes out
# without waiting, so it needs no timeout.
_UNPAUSED_WRITE = 64 * 1024


async def _send(connection: Any, data: bytes) -> None:
    """Write a packed command to a connection of the backend's own."""
    # redis-py's send_packed_command wraps every write in asyncio.wait_for for its timeout,
    # which on Python 3.11 starts a task: the write leaves one event loop turn later, about
    # 18 us on a pickup (measured here). Small writes skip it.
    write = getattr(connection, "_send_packed_command", None)
    if write is None or not connection.is_connected or len(data) >= _UNPAUSED_WRITE:
        await connection.send_packed_command(data)
        return
    if connection.health_check_interval:
        await connection.check_health()
    try:
        await write([data])
    except OSError as error:
        await connection.disconnect(nowait=True)
        raise RedisConnectionError(f"Error while writing to Redis: {error}") from error
    except BaseException:
        # A write cut short leaves the connection out of step with the server.
        await connection.disconnect(nowait=True)
        raise


_REDIS_PY_READ_RESPONSE = getattr(aioredis.Connection, "read_response", None)


async def _read_replies(connection: Any, count: int) -> list[Any]:
    """Read ``count`` replies from a connection of the backend's own, within one deadline.

    The deadline is the connection's socket timeout: SOCKET_TIMEOUT, or the ``socket_timeout``
    of REDIS_URL. It covers all the replies of the call, so a blocking command in the call must
    block for less. An error reply comes back as its ResponseError in its place. Any other
    error, or no reply within the deadline, closes the connection, which is then out of step.
    """
    # redis-py's read_response starts a timer per reply and formats the server's address
    # for its errors. On an idle worker's pickup, which reads two replies, reading them from
    # the parser under one timer saved about 50 us (measured here, 20 ms between jobs).
    parser = getattr(connection, "_parser", None)
    if parser is None or type(connection).read_response is not _REDIS_PY_READ_RESPONSE:
        # A connection class with a reading of its own, such as fakeredis's.
        return await _read_replies_through_redis_py(connection, count)
    limit = connection.socket_timeout or SOCKET_TIMEOUT
    replies = []
    try:
        async with _deadline(limit):
            for _ in range(count):
                replies.append(await parser.read_response())
    except BaseException as error:
        await connection.disconnect(nowait=True)
        # The deadline's TimeoutError has no errno; one from the socket (ETIMEDOUT) has.
        if isinstance(error, asyncio.TimeoutError) and getattr(error, "errno", None) is None:
            raise RedisTimeoutError(f"no reply from Redis within {limit:g}s") from error
        if isinstance(error, OSError):
            raise RedisConnectionError(f"Error while reading from Redis: {error}") from error
        raise
    if connection.health_check_interval:
        # As redis-py's read_response does: a connection that has just replied needs no PING
        # before its next command.
        connection.next_health_check = asyncio.get_running_loop().time() + connection.health_check_interval
    return replies


async def _read_replies_through_redis_py(connection: Any, count: int) -> list[Any]:
    replies = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except ResponseError as error:
            # An error reply ends its command's exchange; the connection stays in step.
            replies.append(error)
    # Any other error leaves the connection closed by redis-py.
    return replies


async def _closed_or_dirty(connection: Any) -> bool:
    """Return True if an idle connection has reached its end, or contains an unread reply."""
    # redis-py 8 renamed can_read_destructive to can_read; both only look at buffers.
    can_read = getattr(connection, "can_read", None) or connection.can_read_destructive
    try:
        return bool(await can_read())
    except (RedisConnectionError, OSError):
        return True


def _decode_cursor(cursor: str | None) -> tuple[int, int]:
    if not cursor:
        return 0, 0
    scan_cursor, separator, skip = cursor.partition("-")
    if not separator or not scan_cursor.isdigit() or not skip.isdigit():
        raise ValueError(f"invalid cursor {cursor!r}: pass the next_cursor of the previous page")
    return int(scan_cursor), int(skip)


def _decode_job(record: str) -> Job | None:
    # A corrupt record is skipped rather than failing the whole listing.
    try:
        return Job.from_record(record)
    except (ValueError, KeyError, TypeError):
        logger.warning("Skipped a job record that cannot be decoded: %.80s", record)
        return None


def _check_url(url: str) -> None:
    # redis-py reports a bad port or database only when it first connects, as a ValueError
    # deep inside a command. Checking here turns it into a start-up error.
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError as error:
        raise ConfigError(f"invalid REDIS_URL={redact_url(url)!r}: {error}; use a port from 1 to 65535") from None
    database = parts.path.lstrip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ConfigError(
            f"invalid REDIS_URL={redact_url(url)!r}: database {database!r} is not a number; "
            "use a path such as /0"
        )
