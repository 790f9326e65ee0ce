"""Worker behaviour on the embedded backend and on real Redis."""

from __future__ import annotations

import contextvars
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from bananas_core.backends import create_backend
from bananas_core.backends.redis import RedisBackend
from bananas_core.client import Client, JobSpec
from bananas_core import hookimpl
from bananas_core.errors import BackendError, InvalidPayload
from bananas_core.job import Job, JobStatus
from bananas_core.plugins import load_plugins
from bananas_core.scheduler import Scheduler
from bananas_core.settings import Settings, load_settings
from bananas_core.worker import Worker, _lease_clock
# private_redis is a fixture: a redis-server of the test's own, which it may stop.
from tests.chaos.conftest import PrivateRedis, private_redis  # noqa: F401
from tests.handlers import RECORDED

pytestmark = pytest.mark.anyio

FINAL = {JobStatus.completed, JobStatus.dead}


@dataclass
class System:
    settings: Settings
    client: Client
    worker: Worker

    async def wait_for(self, job: Job, statuses: set[JobStatus] = FINAL, timeout: float = 10) -> Job:
        with anyio.fail_after(timeout):
            while True:
                current = await self.client.get_job(job.id)
                if current.status in statuses:
                    return current
                await anyio.sleep(0.01)

    async def wait_until_started(self, job: Job, timeout: float = 10) -> None:
        # Redis shows a job as processing once it is leased, a moment before a slot starts it,
        # and a stopping worker returns a leased job that no slot has started.
        with anyio.fail_after(timeout):
            while job.id not in self.worker._run_scopes:
                await anyio.sleep(0.01)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://worker-test-{uuid.uuid4().hex}"
    return request.getfixturevalue("redis_url")


def make_settings(url: str, prefix: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "REDIS_URL": url,
        "KEY_PREFIX": prefix,
        "PLUGINS": "tests.handlers",
        "SHUTDOWN_GRACE": 2,
        "SCHEDULER_INTERVAL": 0.05,
    }
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def start_system(settings: Settings) -> AsyncIterator[System]:
    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    worker = Worker(settings, backend, plugins)
    scheduler = Scheduler(settings, backend, plugins)
    client = Client(settings, plugins=plugins, backend=backend)
    try:
        async with anyio.create_task_group() as services:
            services.start_soon(worker.run, False)
            services.start_soon(scheduler.run, False)
            yield System(settings, client, worker)
            worker.stop()
            scheduler.stop()
    finally:
        await backend.close()


@pytest.fixture
async def system(backend_url: str, key_prefix: str) -> AsyncIterator[System]:
    async with start_system(make_settings(backend_url, key_prefix)) as running:
        yield running


async def test_completed_job_keeps_result(system: System) -> None:
    job = await system.client.submit("echo", {"greeting": "hello", "empty": {}})

    done = await system.wait_for(job)

    assert done.status is JobStatus.completed
    assert done.result == {"greeting": "hello", "empty": {}}
    assert done.attempts == 1
    assert done.started_at is not None
    assert done.finished_at is not None and done.finished_at >= done.started_at


async def test_async_and_sync_handlers_both_run(system: System) -> None:
    first = await system.client.submit("async_sleep", {"seconds": 0.01})
    second = await system.client.submit("blocking_sleep", {"seconds": 0.01})

    assert (await system.wait_for(first)).result == 0.01
    assert (await system.wait_for(second)).result == 0.01


async def test_unknown_handler_goes_dead(system: System) -> None:
    job = await system.client.submit("no_such_handler", {})

    dead = await system.wait_for(job)

    assert dead.status is JobStatus.dead
    assert dead.error is not None
    assert dead.error.type == "UnknownHandler"
    assert "no_such_handler" in dead.error.message
    assert dead.retries == 0


async def test_permanent_error_skips_retries(system: System) -> None:
    job = await system.client.submit("reject", {}, max_retries=3)

    dead = await system.wait_for(job)

    assert dead.status is JobStatus.dead
    assert dead.attempts == 1
    assert dead.error is not None and dead.error.type == "PermanentError"


@pytest.mark.parametrize("kind", ["object", "nan"])
async def test_non_json_result_goes_dead(system: System, kind: str) -> None:
    job = await system.client.submit("not_json", {"kind": kind})

    dead = await system.wait_for(job)

    assert dead.status is JobStatus.dead
    assert dead.error is not None and "not JSON serialisable" in dead.error.message


async def test_async_timeout_fails_and_frees_slot(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=1, MAX_RETRIES=0)
    async with start_system(settings) as system:
        slow = await system.client.submit("async_sleep", {"seconds": 30}, timeout=0.2)
        quick = await system.client.submit("echo", {"after": "timeout"})

        dead = await system.wait_for(slow)
        done = await system.wait_for(quick)

        assert dead.status is JobStatus.dead
        assert dead.error is not None and dead.error.type == "JobTimeout"
        assert "0.2s" in dead.error.message
        assert done.status is JobStatus.completed


async def test_sync_timeout_frees_slot(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=1, MAX_RETRIES=0)
    async with start_system(settings) as system:
        stuck = await system.client.submit("blocking_sleep", {"seconds": 1.5}, timeout=0.2)
        quick = await system.client.submit("echo", {})

        dead = await system.wait_for(stuck)
        done = await system.wait_for(quick, timeout=1)

        assert dead.error is not None and dead.error.type == "JobTimeout"
        assert done.status is JobStatus.completed


async def test_strict_priority_and_fifo(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=1)
    async with start_system(settings) as system:
        blocker = await system.client.submit("async_sleep", {"seconds": 0.3})
        await system.wait_for(blocker, {JobStatus.processing})
        RECORDED.clear()
        submitted = []
        for number, priority in enumerate(["low", "normal", "high", "low", "normal", "high"]):
            tag = f"{priority}-{number}"
            submitted.append(await system.client.submit("record", {"tag": tag}, priority=priority))

        for job in submitted:
            await system.wait_for(job)

        assert RECORDED == ["high-2", "high-5", "normal-1", "normal-4", "low-0", "low-3"]


async def test_prefetched_jobs_yield_to_higher_priority(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=1, WORKER_PREFETCH=3)
    async with start_system(settings) as system:
        blocker = await system.client.submit("async_sleep", {"seconds": 0.4})
        await system.wait_for(blocker, {JobStatus.processing})
        RECORDED.clear()
        prefetched = [
            await system.client.submit("record", {"tag": tag}, priority=priority)
            for tag, priority in [("low-0", "low"), ("normal-1", "normal"), ("normal-2", "normal")]
        ]
        for job in prefetched:
            await system.wait_for(job, {JobStatus.processing})
        urgent = await system.client.submit("record", {"tag": "high-3"}, priority="high")

        for job in [*prefetched, urgent]:
            await system.wait_for(job)

    assert RECORDED == ["high-3", "normal-1", "normal-2", "low-0"]


async def test_processing_jobs_never_exceed_slots(backend_url: str, key_prefix: str) -> None:
    # Both exchange lanes lease, each for the slots that neither the other lane nor a
    # running job holds.
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=3)
    async with start_system(settings) as system:
        specs = [JobSpec("async_sleep", {"seconds": 0.002}) for _ in range(90)]
        await system.client.submit_batch(specs)
        max_processing = 0
        with anyio.fail_after(20):
            while True:
                counts = await system.client.counts()
                max_processing = max(max_processing, counts.processing)
                if counts.completed == len(specs):
                    break

    assert max_processing <= 3
    assert max_processing >= 2


async def test_stop_returns_leased_jobs_in_queue_order(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(
        backend_url, key_prefix, WORKER_CONCURRENCY=2, WORKER_PREFETCH=5, SHUTDOWN_GRACE=5
    )
    async with start_system(settings) as system:
        submitted: list[str] = []
        for _ in range(4):
            batch = [JobSpec("async_sleep", {"seconds": 0.001}) for _ in range(100)]
            submitted += [submission.job.id for submission in await system.client.submit_batch(batch)]
        with anyio.fail_after(10):
            while (await system.client.counts()).completed < 100:
                await anyio.sleep(0.005)

        system.worker.stop()
        with anyio.fail_after(10):
            while (await system.client.counts()).processing:
                await anyio.sleep(0.01)
        backend = system.client.backend
        assert isinstance(backend, RedisBackend)
        queued = await backend.client.lrange(backend.keys.normal, 0, -1)

    positions = [submitted.index(job_id) for job_id in queued]
    assert positions == sorted(positions)
    assert queued[-1] == submitted[-1]


def failing_first(method: Any, times: int) -> tuple[Any, list[None]]:
    """Return a stand-in for a backend method whose first ``times`` calls raise BackendError,
    and the list that gets one entry per call."""
    calls: list[None] = []

    async def failing(self: RedisBackend, *args: Any) -> Any:
        calls.append(None)
        if len(calls) <= times:
            raise BackendError(f"Redis at test failed in {method.__name__}: ConnectionError: refused")
        return await method(self, *args)

    return failing, calls


async def test_outage_logs_one_line_for_both_lanes(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failing_exchange, calls = failing_first(RedisBackend.exchange, 2)
    monkeypatch.setattr(RedisBackend, "exchange", failing_exchange)
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=4)
    async with start_system(settings) as system:
        # Eight jobs for four slots: each lane leases two, and both meet the failure.
        submitted = await system.client.submit_batch([JobSpec("echo", {"n": n}) for n in range(8)])
        for submission in submitted:
            await system.wait_for(submission.job)

    warnings = [record for record in caplog.records if "could not record outcomes" in record.getMessage()]
    assert len(calls) > 2
    assert len(warnings) == 1


async def test_stop_ends_backoff(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(self: RedisBackend, *args: Any) -> Any:
        raise BackendError("Redis at test failed: ConnectionError: refused")

    monkeypatch.setattr(RedisBackend, "exchange", unreachable)
    monkeypatch.setattr(RedisBackend, "wait_and_lease", unreachable)
    settings = make_settings(backend_url, key_prefix)
    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    worker = Worker(settings, backend, plugins)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: worker.run(handle_signals=False))
            # Six failures in a row: the next wait is 3.2 s long.
            with anyio.fail_after(10):
                while worker._lane_failures < 6:
                    await anyio.sleep(0.05)
            stopped_at = anyio.current_time()
            worker.stop()
        stop_seconds = anyio.current_time() - stopped_at
    finally:
        await backend.close()

    assert stop_seconds < 1


async def test_failed_registration_retried_quickly(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_at_first, calls = failing_first(RedisBackend.register_worker, 2)
    monkeypatch.setattr(RedisBackend, "register_worker", out_at_first)
    # Renewals come every 10 s: the worker must not wait for one to register.
    async with start_system(make_settings(backend_url, key_prefix, LEASE_TIMEOUT=30)) as system:
        started = anyio.current_time()
        # Polled to a limit rather than under fail_after, so that the worker stops normally.
        while not await system.client.workers() and anyio.current_time() - started < 5:
            await anyio.sleep(0.05)
        registered_after = anyio.current_time() - started

    assert len(calls) == 3
    assert registered_after < 3


async def test_idle_worker_cancelled_without_stop_exits(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix)
    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    worker = Worker(settings, backend, plugins)
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(lambda: worker.run(handle_signals=False))
                while not worker._blocked:  # idle, in its wait on the wake-up list
                    await anyio.sleep(0.02)
                cancelled_at = anyio.current_time()
                group.cancel_scope.cancel()
        exit_seconds = anyio.current_time() - cancelled_at
    finally:
        await backend.close()

    # The wait in progress ends within its 1 s timeout, and no new one starts.
    assert exit_seconds < 3


async def test_stopping_worker_starts_no_new_job(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=2, SHUTDOWN_GRACE=5)
    async with start_system(settings) as system:
        running = await system.client.submit("async_sleep", {"seconds": 0.5})
        await system.wait_for(running, {JobStatus.processing})
        await anyio.sleep(0.1)  # the queue is empty: a wait blocks on the wake-up list
        # A job that reaches the queue without a wake-up token. The stop ends the wait, and
        # the lease sent behind it takes this job.
        late = system.client._build_job("job", JobSpec("record", {"tag": "late"}))
        backend = system.client.backend
        assert isinstance(backend, RedisBackend)
        await backend.client.hset(backend.keys.jobs, late.id, late.to_record())
        await backend.client.rpush(backend.keys.normal, late.id)
        RECORDED.clear()

        system.worker.stop()
        finished = await system.wait_for(running)
        returned = await system.wait_for(late, {JobStatus.pending})

    assert finished.status is JobStatus.completed
    assert "late" not in RECORDED
    assert returned.attempts == 0


async def test_stop_returns_prefetched_jobs_at_once(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(
        backend_url, key_prefix, WORKER_CONCURRENCY=1, WORKER_PREFETCH=2, SHUTDOWN_GRACE=5
    )
    async with start_system(settings) as system:
        running = await system.client.submit("async_sleep", {"seconds": 0.3})
        await system.wait_until_started(running)
        prefetched = [await system.client.submit("echo", {"n": n}) for n in range(2)]
        for job in prefetched:
            await system.wait_for(job, {JobStatus.processing})

    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    try:
        finished = await backend.get_job(running.id)
        returned = [await backend.get_job(job.id) for job in prefetched]
        queued = await backend.claim(10, "test-worker", 30)
    finally:
        await backend.close()
    assert finished.status is JobStatus.completed
    assert [job.status for job in returned] == [JobStatus.pending, JobStatus.pending]
    assert [job.attempts for job in returned] == [0, 0]
    # Returned to the head of the queue in their original order.
    assert [job.id for job in queued] == [job.id for job in prefetched]


async def test_failed_job_retries_then_succeeds(backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bananas_core.retry.BACKOFF_BASE", 0.05)
    async with start_system(make_settings(backend_url, key_prefix)) as system:
        job = await system.client.submit("flaky", {"failures": 2}, max_retries=3)

        done = await system.wait_for(job)

        assert done.status is JobStatus.completed
        assert done.result == 3
        assert done.attempts == 3
        assert done.retries == 2
        assert done.error is not None and "attempt 2 failed" in done.error.message


async def test_retries_used_up_go_dead(backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bananas_core.retry.BACKOFF_BASE", 0.05)
    async with start_system(make_settings(backend_url, key_prefix)) as system:
        job = await system.client.submit("fail", {"message": "always"}, max_retries=2)

        dead = await system.wait_for(job)
        counts = await system.client.counts()

        assert dead.status is JobStatus.dead
        assert dead.attempts == 3
        assert dead.retries == 2
        assert dead.error is not None and dead.error.message == "always"
        assert counts.dead == 1
        assert counts.scheduled == 0


async def test_delayed_job_waits_for_run_time(system: System) -> None:
    job = await system.client.submit("echo", {}, delay=0.3)
    assert job.status is JobStatus.scheduled

    done = await system.wait_for(job)

    assert done.status is JobStatus.completed
    assert done.started_at is not None and done.started_at >= job.run_at


async def test_stop_returns_unfinished_jobs(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, SHUTDOWN_GRACE=0.2)
    async with start_system(settings) as system:
        job = await system.client.submit("async_sleep", {"seconds": 30})
        await system.wait_for(job, {JobStatus.processing})

    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    try:
        returned = await backend.get_job(job.id)
        counts = await backend.counts()
    finally:
        await backend.close()
    assert returned.status is JobStatus.pending
    assert returned.attempts == 0
    assert counts.normal == 1
    assert counts.processing == 0


async def test_job_that_finishes_in_grace_is_completed(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, SHUTDOWN_GRACE=5)
    async with start_system(settings) as system:
        job = await system.client.submit("async_sleep", {"seconds": 0.3})
        await system.wait_until_started(job)

    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    try:
        finished = await backend.get_job(job.id)
    finally:
        await backend.close()
    assert finished.status is JobStatus.completed


async def test_isolated_handler_runs_in_child_process(system: System) -> None:
    job = await system.client.submit("isolated_echo", {"x": [1, {}]})

    done = await system.wait_for(job)

    assert done.status is JobStatus.completed
    assert done.result["payload"] == {"x": [1, {}]}
    assert done.result["attempt"] == 1
    assert done.result["pid"] != os.getpid()


async def test_isolated_errors_keep_type_and_permanence(system: System) -> None:
    rejected = await system.client.submit("isolated_echo", {"reject": True})

    dead = await system.wait_for(rejected)

    assert dead.status is JobStatus.dead
    assert dead.attempts == 1
    assert dead.error is not None
    assert dead.error.type == "PermanentError"
    assert "isolated rejection" in dead.error.message
    assert "isolated_echo" in dead.error.traceback


async def test_cpu_loop_is_killed_and_pool_keeps_its_size(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=2, MAX_RETRIES=0)
    async with start_system(settings) as system:
        stuck = [await system.client.submit(name, {"seconds": 30}, timeout=0.5)
                 for name in ("cpu_loop", "cpu_loop", "blocking_sleep_isolated", "blocking_sleep")]
        for job in stuck:
            dead = await system.wait_for(job, timeout=15)
            assert dead.error is not None and dead.error.type == "JobTimeout", dead.error

        after = [await system.client.submit("async_sleep", {"seconds": 0.5}) for _ in range(2)]
        finished = [await system.wait_for(job, timeout=5) for job in after]

    # Both slots are free again: the two jobs ran side by side, not one after the other.
    starts = sorted(job.started_at for job in finished)
    assert (starts[1] - starts[0]).total_seconds() < 0.3


async def test_lost_lease_stops_the_local_run(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, LEASE_TIMEOUT=1.5)
    async with start_system(settings) as system:
        job = await system.client.submit("async_sleep", {"seconds": 30})
        running = await system.wait_for(job, {JobStatus.processing})
        # Another delivery takes over the job, as after this worker's lease expired.
        backend = system.client.backend
        await backend.client.hset(backend.keys.leases, job.id, running.token + 1)

        with anyio.fail_after(5):
            while job.id in system.worker.running:
                await anyio.sleep(0.05)

        current = await system.client.get_job(job.id)
    assert current.status is JobStatus.processing
    assert current.token == running.token


async def test_heartbeat_ignores_lease_of_ended_run(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(backend_url, key_prefix, LEASE_TIMEOUT=1.5)
    async with start_system(settings) as system:
        worker = system.worker
        heartbeat = worker.backend.heartbeat

        async def heartbeat_outrun_by_exchange(jobs: list[Job], lease: float) -> list[str]:
            # The run ends and its outcome is recorded before the heartbeat's reply arrives,
            # so the heartbeat finds no lease for the job.
            await heartbeat(jobs, lease)
            with anyio.fail_after(5):
                while any(job.id in worker.running for job in jobs):
                    await anyio.sleep(0.01)
            return [job.id for job in jobs]

        monkeypatch.setattr(worker.backend, "heartbeat", heartbeat_outrun_by_exchange)
        job = await system.client.submit("async_sleep", {"seconds": 0.7})
        finished = await system.wait_for(job)
        await anyio.sleep(0.6)  # the heartbeat's reply arrives after the run ended

    assert finished.status is JobStatus.completed
    assert "lost the lease" not in caplog.text


async def heartbeat_of_cut_off_worker(jobs: list[Job], lease: float) -> list[str]:
    """Fail as the heartbeat of a worker that is paused or cannot reach Redis: its leases run out."""
    raise BackendError("cut off from Redis on purpose")


@pytest.mark.parametrize("heartbeat_returns", [False, True], ids=["cut-off", "heartbeat-returns"])
async def test_expired_prefetched_job_does_not_run(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, heartbeat_returns: bool,
) -> None:
    settings = make_settings(
        backend_url, key_prefix, WORKER_CONCURRENCY=1, WORKER_PREFETCH=1, LEASE_TIMEOUT=1
    )
    tag = f"late-{uuid.uuid4().hex}"
    async with start_system(settings) as system:
        worker = system.worker
        heartbeat = worker.backend.heartbeat
        cut_off = True

        async def heartbeat_until_reconnected(jobs: list[Job], lease: float) -> list[str]:
            if cut_off:
                return await heartbeat_of_cut_off_worker(jobs, lease)
            return await heartbeat(jobs, lease)

        monkeypatch.setattr(worker.backend, "heartbeat", heartbeat_until_reconnected)
        running = await system.client.submit("async_sleep", {"seconds": 2})
        await system.wait_until_started(running)
        late = await system.client.submit("record", {"tag": tag})
        await system.wait_for(late, {JobStatus.processing})

        # The scheduler returns the expired lease to the queue, and another worker takes it.
        await system.wait_for(late, {JobStatus.pending})
        claimed = await worker.backend.claim(10, "other-worker", 30)
        cut_off = not heartbeat_returns
        with anyio.fail_after(5):
            while running.id in worker._run_scopes or worker._ready:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)

    assert late.id in [job.id for job in claimed]
    assert tag not in RECORDED
    if heartbeat_returns:
        assert f"lost the lease of job {late.id} before a slot took it" in caplog.text
    else:
        assert f"Could not renew the lease of job {late.id}:record" in caplog.text


async def test_prefetched_job_leased_again_runs_once(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        backend_url, key_prefix, WORKER_CONCURRENCY=1, WORKER_PREFETCH=2, LEASE_TIMEOUT=1
    )
    tag = f"twice-{uuid.uuid4().hex}"
    async with start_system(settings) as system:
        worker = system.worker
        monkeypatch.setattr(worker.backend, "heartbeat", heartbeat_of_cut_off_worker)
        running = await system.client.submit("async_sleep", {"seconds": 2})
        await system.wait_until_started(running)
        late = await system.client.submit("record", {"tag": tag})

        # The expired lease goes back to the queue, and the worker's spare prefetch leases the
        # job again while the first delivery still waits for the slot.
        with anyio.fail_after(5):
            while (await system.client.get_job(late.id)).token < 2:
                await anyio.sleep(0.01)
        monkeypatch.undo()
        done = await system.wait_for(late, timeout=10)

    assert done.status is JobStatus.completed
    assert RECORDED.count(tag) == 1


async def test_lease_ran_out_during_late_reply(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=1, LEASE_TIMEOUT=1)
    tag = f"late-reply-{uuid.uuid4().hex}"
    wait_and_lease = RedisBackend.wait_and_lease
    claimed: list[Job] = []

    claim_tried = anyio.Event()

    async def wait_and_lease_with_late_reply(self: RedisBackend, *args: Any) -> list[Job]:
        # The worker is paused while the reply travels, and another worker takes the job.
        leased = await wait_and_lease(self, *args)
        if leased and not claim_tried.is_set():
            await anyio.sleep(1.6)
            claimed.extend(await self.claim(10, "other-worker", 30))
            claim_tried.set()
        return leased

    monkeypatch.setattr(RedisBackend, "wait_and_lease", wait_and_lease_with_late_reply)
    async with start_system(settings) as system:
        with anyio.fail_after(5):
            while not system.worker._blocked:
                await anyio.sleep(0.01)
        late = await system.client.submit("record", {"tag": tag})
        with anyio.fail_after(5):
            await claim_tried.wait()
        assert [job.id for job in claimed] == [late.id], "the scheduler did not return the expired lease in time"
        with anyio.fail_after(5):
            while system.worker._busy:
                await anyio.sleep(0.01)

    assert tag not in RECORDED
    assert f"lost the lease of job {late.id} before a slot took it" in caplog.text


@pytest.mark.parametrize("method", ["wait_and_lease", "exchange"])
async def test_lost_lease_reply_runs_job_at_once(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, method: str,
) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=1)
    call = getattr(RedisBackend, method)
    lost: list[str] = []

    async def call_whose_reply_is_lost(self: RedisBackend, *args: Any) -> Any:
        # Redis carries the call out, and the connection drops before the reply arrives.
        reply = await call(self, *args)
        leased = reply[1] if method == "exchange" else reply
        if leased and not lost:
            lost.extend(job.id for job in leased)
            raise BackendError("Redis at test failed: ConnectionError: reply lost on purpose")
        return reply

    # Patched before the worker starts, because an idle worker's first call is already waiting.
    monkeypatch.setattr(RedisBackend, method, call_whose_reply_is_lost)
    async with start_system(settings) as system:
        # The idle worker's wait leases the first job, and the call that records the first
        # job's outcome leases the second.
        with anyio.fail_after(5):
            while not system.worker._blocked:
                await anyio.sleep(0.01)
        first = await system.client.submit("async_sleep", {"seconds": 0.3})
        await system.wait_for(first, {JobStatus.processing, *FINAL})
        second = await system.client.submit("echo", {})
        # The lease would expire after LEASE_TIMEOUT (30 s) without the recovery.
        finished = [await system.wait_for(job, timeout=8) for job in (first, second)]

    assert len(lost) == 1
    assert [job.status for job in finished] == [JobStatus.completed, JobStatus.completed]
    assert [job.crashes for job in finished] == [0, 0]
    assert [job.attempts for job in finished] == [1, 1]
    assert f"found 1 jobs leased by calls whose replies were lost, and runs them: {lost[0]}" in caplog.text


@asynccontextmanager
async def worker_losing_first_lease(
    backend_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    on_lost: Callable[[RedisBackend, list[Job]], Awaitable[object]] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[Worker, Client, list[str]]]:
    """Run a worker whose first lease loses its reply, and which stops in that call.

    ``on_lost`` runs in that call after Redis leased the jobs, before the failure. The worker
    has stopped when the block ends.
    """
    settings = make_settings(backend_url, key_prefix, **options)
    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    worker = Worker(settings, backend, plugins)
    wait_and_lease = RedisBackend.wait_and_lease
    lost: list[str] = []

    async def stop_and_lose_reply(self: RedisBackend, *args: Any) -> list[Job]:
        leased = await wait_and_lease(self, *args)
        if leased and not lost:
            lost.extend(job.id for job in leased)
            if on_lost is not None:
                await on_lost(self, leased)
            worker.stop()
            raise BackendError("Redis at test failed: ConnectionError: reply lost on purpose")
        return leased

    monkeypatch.setattr(RedisBackend, "wait_and_lease", stop_and_lose_reply)
    client = Client(settings, plugins=plugins, backend=backend)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: worker.run(handle_signals=False))
            with anyio.fail_after(5):
                while not worker._blocked:
                    await anyio.sleep(0.01)
            yield worker, client, lost
    finally:
        await backend.close()


async def test_stopping_worker_returns_lost_reply_jobs(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with worker_losing_first_lease(backend_url, key_prefix, monkeypatch, WORKER_CONCURRENCY=4) as (
        worker, client, lost,
    ):
        submitted = await client.submit_batch([JobSpec("echo", {"n": n}) for n in range(6)])
        with anyio.fail_after(5):
            while not lost:
                await anyio.sleep(0.01)
    async with Client(worker.settings) as reader:
        returned = [await reader.get_job(each.job.id) for each in submitted]
        queued = await reader.backend.client.lrange(reader.backend.keys.normal, 0, -1)

    # The first lease takes the first jobs, at most one per slot.
    assert 2 <= len(lost) <= 4
    assert lost == [each.job.id for each in submitted[: len(lost)]]
    assert [job.status for job in returned] == [JobStatus.pending] * 6
    assert [job.crashes for job in returned] == [0] * 6
    assert [job.attempts for job in returned] == [0] * 6
    assert queued == [each.job.id for each in submitted]
    assert f"returned job {lost[0]}:echo, leased by a call whose reply was lost" in caplog.text


async def test_stopping_worker_cancels_lost_reply_job(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[str] = []

    async def cancel_leased(backend: RedisBackend, leased: list[Job]) -> None:
        outcomes.append((await backend.cancel_job(leased[0].id))[0])

    async with worker_losing_first_lease(backend_url, key_prefix, monkeypatch, cancel_leased) as (
        worker, client, lost,
    ):
        job = await client.submit("echo", {})
        with anyio.fail_after(5):
            while not lost:
                await anyio.sleep(0.01)
    async with Client(worker.settings) as reader:
        after_stop = await reader.get_job(job.id)

    assert outcomes == ["requested"]
    assert after_stop.status is JobStatus.cancelled
    assert after_stop.crashes == 0


async def test_recovery_waits_for_lease_in_flight(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=2, WORKER_PREFETCH=2)
    tag = f"in-flight-{uuid.uuid4().hex}"
    exchange = RedisBackend.exchange
    leases: list[int] = []

    async def exchange_slow_then_lost(self: RedisBackend, outcomes: Any, count: int, *args: Any) -> Any:
        reply = await exchange(self, outcomes, count, *args)
        if count and reply[1]:
            leases.append(len(reply[1]))
            if len(leases) == 1:
                await anyio.sleep(1)  # this lane's reply is still on its way
            elif len(leases) == 2:
                raise BackendError("Redis at test failed: ConnectionError: reply lost on purpose")
        return reply

    # The jobs wait before the worker starts, so both lanes lease at once.
    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    try:
        client = Client(settings, plugins=plugins, backend=backend)
        jobs = [await client.submit("record", {"tag": f"{tag}-{n}"}) for n in range(4)]
    finally:
        await backend.close()
    monkeypatch.setattr(RedisBackend, "exchange", exchange_slow_then_lost)
    async with start_system(settings) as system:
        done = [await system.wait_for(job) for job in jobs]
        await anyio.sleep(1.5)

    assert len(leases) >= 2
    assert [job.status for job in done] == [JobStatus.completed] * 4
    assert [RECORDED.count(f"{tag}-{n}") for n in range(4)] == [1, 1, 1, 1]


async def test_no_lease_goes_out_during_recovery(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=2)
    wait_and_lease, exchange, leased_to = RedisBackend.wait_and_lease, RedisBackend.exchange, RedisBackend.leased_to
    scans: list[str] = []  # "started" and "ended" of each recovery's lookup
    leases_during_scan: list[str] = []
    lost: list[str] = []

    def scanning() -> bool:
        return bool(scans) and scans[-1] == "started"

    async def wait_and_lease_watched(self: RedisBackend, *args: Any) -> list[Job]:
        if scanning():
            leases_during_scan.append("wait_and_lease")
        leased = await wait_and_lease(self, *args)
        if any(job.name == "echo" for job in leased) and not lost:
            lost.extend(job.id for job in leased)
            raise BackendError("Redis at test failed: ConnectionError: reply lost on purpose")
        return leased

    async def exchange_watched(self: RedisBackend, outcomes: Any, count: int, *args: Any) -> Any:
        if count and scanning():
            leases_during_scan.append("exchange")
        return await exchange(self, outcomes, count, *args)

    async def slow_leased_to(self: RedisBackend, worker: str) -> list[Job]:
        scans.append("started")
        try:
            await anyio.sleep(1)
            return await leased_to(self, worker)
        finally:
            scans.append("ended")

    monkeypatch.setattr(RedisBackend, "wait_and_lease", wait_and_lease_watched)
    monkeypatch.setattr(RedisBackend, "exchange", exchange_watched)
    monkeypatch.setattr(RedisBackend, "leased_to", slow_leased_to)
    async with start_system(settings) as system:
        # The first job ends during the lookup, and its outcome goes out then.
        running = await system.client.submit("async_sleep", {"seconds": 0.5})
        await system.wait_until_started(running)
        job = await system.client.submit("echo", {})
        finished = [await system.wait_for(each) for each in (running, job)]

    assert lost == [job.id]
    assert scans[:2] == ["started", "ended"]
    assert leases_during_scan == []
    assert [each.status for each in finished] == [JobStatus.completed, JobStatus.completed]


async def test_heartbeat_keeps_newer_delivery(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job waits 3 s for the slot, less than half of LEASE_TIMEOUT, so only the heartbeat
    # loop renews leases.
    settings = make_settings(
        backend_url, key_prefix, WORKER_CONCURRENCY=1, WORKER_PREFETCH=1, LEASE_TIMEOUT=7
    )
    tag = f"newer-{uuid.uuid4().hex}"
    async with start_system(settings) as system:
        worker = system.worker
        backend = worker.backend
        heartbeat = backend.heartbeat
        lost_reported: list[list[str]] = []

        running = await system.client.submit("async_sleep", {"seconds": 3})
        await system.wait_until_started(running)
        job = await system.client.submit("record", {"tag": tag})
        with anyio.fail_after(5):
            while not any(waiting.id == job.id for waiting in worker._ready):
                await anyio.sleep(0.01)

        async def heartbeat_overtaken_by_lease(jobs: list[Job], lease: float) -> list[str]:
            old = next((each for each in jobs if each.id == job.id), None)
            if old is not None and not lost_reported:
                # While the heartbeat with the old token travels, the old lease ends (release
                # plays the scheduler) and a lane's reply brings the job's next delivery.
                assert await backend.release(old)
                _, leased = await backend.exchange([], 1, worker.id, lease)
                worker._dispatch(leased, _lease_clock())
            lost = await heartbeat(jobs, lease)
            if old is not None:
                lost_reported.append(lost)
            return lost

        monkeypatch.setattr(backend, "heartbeat", heartbeat_overtaken_by_lease)
        done = await system.wait_for(job, timeout=10)

    assert lost_reported[0] == [job.id]
    assert done.status is JobStatus.completed
    assert done.crashes == 0
    assert RECORDED.count(tag) == 1


async def test_stop_after_failed_lease_with_redis_down(key_prefix: str, private_redis: PrivateRedis) -> None:
    settings = make_settings(private_redis.url, key_prefix, WORKER_CONCURRENCY=1, SHUTDOWN_GRACE=1)
    with anyio.fail_after(30):
        async with start_system(settings) as system:
            with anyio.fail_after(5):
                while not system.worker._blocked:
                    await anyio.sleep(0.01)
            private_redis.stop()
            await anyio.sleep(1.5)
            unknown_before_stop = system.worker._leases_unknown
            stop_started = anyio.current_time()
        stopped_after = anyio.current_time() - stop_started

    assert unknown_before_stop
    # The wait blocks for up to the socket timeout (10 s) when Redis is gone, not forever.
    assert stopped_after < 15


async def test_observers_see_final_job_state(backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bananas_core.retry.BACKOFF_BASE", 0.05)
    seen: list[tuple[str, Job]] = []

    class Observer:
        @hookimpl
        def bananas_job_succeeded(self, job: Job) -> None:
            seen.append(("succeeded", job))

        @hookimpl
        def bananas_job_retry_scheduled(self, job: Job) -> None:
            seen.append(("retry", job))

        @hookimpl
        def bananas_job_dead(self, job: Job) -> None:
            seen.append(("dead", job))

    async with start_system(make_settings(backend_url, key_prefix)) as system:
        system.worker.plugins.manager.register(Observer())
        ok = await system.client.submit("echo", {"a": 1})
        failing = await system.client.submit("fail", {}, max_retries=1)
        await system.wait_for(ok)
        await system.wait_for(failing)

    events = {(event, job.id): job for event, job in seen}
    succeeded = events[("succeeded", ok.id)]
    retry = events[("retry", failing.id)]
    dead = events[("dead", failing.id)]
    assert succeeded.status is JobStatus.completed
    assert succeeded.result == {"a": 1}
    assert succeeded.finished_at is not None
    assert retry.status is JobStatus.scheduled
    assert retry.run_at is not None
    assert retry.retries == 1
    assert dead.status is JobStatus.dead
    assert dead.error is not None and dead.error.type == "RuntimeError"


async def test_outcome_hooks_share_run_context(system: System) -> None:
    # A tracing plugin sets a context variable when a job starts and reads it when the job
    # ends, so both hooks must run in the task that ran the job.
    current_run: contextvars.ContextVar[str] = contextvars.ContextVar("current_run", default="")
    seen: dict[str, str] = {}

    class Tracer:
        @hookimpl
        def bananas_job_started(self, job: Job) -> None:
            current_run.set(job.id)

        @hookimpl
        def bananas_job_succeeded(self, job: Job) -> None:
            seen[job.id] = current_run.get()

    system.worker.plugins.manager.register(Tracer())
    jobs = [await system.client.submit("echo", {"n": n}) for n in range(5)]
    for job in jobs:
        await system.wait_for(job)

    with anyio.fail_after(5):
        while len(seen) < len(jobs):
            await anyio.sleep(0.01)
    assert seen == {job.id: job.id for job in jobs}


async def test_busy_worker_records_and_leases_in_batches(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    exchange = RedisBackend.exchange

    async def counting_exchange(self: RedisBackend, outcomes: list, count: int, *args: object) -> object:
        calls.append((len(outcomes), count))
        return await exchange(self, outcomes, count, *args)

    monkeypatch.setattr(RedisBackend, "exchange", counting_exchange)
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=10)
    async with start_system(settings) as system:
        submitted = await system.client.submit_batch([JobSpec("echo", {"n": n}) for n in range(100)])
        jobs = [submission.job for submission in submitted]
        for job in jobs:
            await system.wait_for(job)

    recorded = sum(outcomes for outcomes, _ in calls)
    assert recorded == 100
    # Finished runs are acknowledged together with the next lease, not one call per job. Each
    # of the two exchange lanes leases at most 5 of the 10 slots, and the threads of the sync
    # handler finish at different moments: about 50 calls were counted.
    assert len(calls) <= 70, calls


async def test_wait_leases_job_arriving_mid_run(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=2)
    async with start_system(settings) as system:
        backend = system.worker.backend
        leased_by_wait: list[str] = []
        wait_and_lease = backend.wait_and_lease

        async def recording_wait_and_lease(*args: Any, **kwargs: Any) -> list[Job]:
            jobs = await wait_and_lease(*args, **kwargs)
            leased_by_wait.extend(job.id for job in jobs)
            return jobs

        monkeypatch.setattr(backend, "wait_and_lease", recording_wait_and_lease)
        running = await system.client.submit("async_sleep", {"seconds": 0.6})
        await system.wait_for(running, {JobStatus.processing})
        await anyio.sleep(0.1)  # the queue is empty: a wait blocks on the wake-up list
        arriving = await system.client.submit("echo", {"n": 1})
        await system.wait_for(arriving)

        # The lease behind the wait took the job: no second round trip after the wake-up.
        assert arriving.id in leased_by_wait
        assert (await system.client.get_job(running.id)).status == JobStatus.processing
        assert system.worker._busy <= settings.WORKER_CONCURRENCY


async def test_lease_wakes_one_idle_slot_per_job(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=4)
    async with start_system(settings) as system:
        worker = system.worker
        with anyio.fail_after(5):
            while len(worker._idle_slots) < 4:
                await anyio.sleep(0.01)

        first = await system.client.submit("async_sleep", {"seconds": 0.5})
        await system.wait_until_started(first)
        assert len(worker._idle_slots) == 3
        second = await system.client.submit("async_sleep", {"seconds": 0.5})
        await system.wait_until_started(second)
        assert len(worker._idle_slots) == 2

        await system.wait_for(first)
        await system.wait_for(second)


async def test_idle_slot_cancelled_leaves_no_event(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=3)
    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    worker = Worker(settings, backend, plugins)
    try:
        async with anyio.create_task_group() as slots:
            for _ in range(3):
                slots.start_soon(worker._slot)
            with anyio.fail_after(5):
                while len(worker._idle_slots) < 3:
                    await anyio.sleep(0.01)
            slots.cancel_scope.cancel()
        # A wake-up sent now would otherwise go to an event that no slot waits on.
        assert not worker._idle_slots
    finally:
        await backend.close()


async def test_wrapper_non_json_result_goes_dead(system: System) -> None:
    class SetWrapper:
        @hookimpl
        async def bananas_wrap_job(self, call_next: Any) -> Any:
            await call_next()
            return {1, 2}

    system.worker.plugins.manager.register(SetWrapper())
    job = await system.client.submit("echo", {}, max_retries=2)

    dead = await system.wait_for(job)
    # The worker is still running: a second job reaches its final state too.
    second = await system.wait_for(await system.client.submit("echo", {}))

    assert dead.status is JobStatus.dead
    assert dead.attempts == 1
    assert dead.error is not None and dead.error.type == "InvalidResult"
    assert "bananas_wrap_job plugins of job 'echo' returned set" in dead.error.message
    assert second.status is JobStatus.dead


async def test_system_exit_in_handler_fails_only_the_job(system: System) -> None:
    job = await system.client.submit("exit", {}, max_retries=0)

    dead = await system.wait_for(job)
    after = await system.client.submit("echo", {})

    assert dead.error is not None and dead.error.type == "SystemExit"
    assert (await system.wait_for(after)).status is JobStatus.completed


async def test_running_job_is_cancelled_on_request(system: System) -> None:
    job = await system.client.submit("async_sleep", {"seconds": 30})
    await system.wait_for(job, {JobStatus.processing})

    outcome, _ = await system.client.cancel(job.id)
    cancelled = await system.wait_for(job, {JobStatus.cancelled}, timeout=5)

    assert outcome == "requested"
    assert cancelled.status is JobStatus.cancelled
    assert job.id not in system.worker.running


async def test_worker_registers_and_deregisters(backend_url: str, key_prefix: str) -> None:
    settings = make_settings(backend_url, key_prefix, WORKER_CONCURRENCY=3)
    async with start_system(settings) as system:
        with anyio.fail_after(5):
            while not (workers := await system.client.workers()):
                await anyio.sleep(0.02)
        worker_id = system.worker.id
    async with Client(settings) as client:
        after = await client.workers()

    [info] = workers
    assert info.id == worker_id
    assert info.concurrency == 3
    assert "echo" in info.handlers
    assert after == []


async def test_on_started_runs_before_first_lease(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(backend_url, key_prefix)
    plugins = load_plugins(settings.plugin_modules)
    backend = create_backend(plugins.manager, settings)
    client = Client(settings, plugins=plugins, backend=backend)
    job = await client.submit("echo", {"queued": "before the worker started"})
    steps: list[str] = []

    def recorded(step: str, call: Any) -> Any:
        async def recording(*args: Any, **kwargs: Any) -> Any:
            steps.append(step)
            return await call(*args, **kwargs)

        return recording

    monkeypatch.setattr(backend, "register_worker", recorded("register", backend.register_worker))
    monkeypatch.setattr(backend, "wait_and_lease", recorded("lease", backend.wait_and_lease))
    monkeypatch.setattr(backend, "exchange", recorded("lease", backend.exchange))
    worker = Worker(settings, backend, plugins)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: worker.run(handle_signals=False, on_started=lambda: steps.append("started")))
            with anyio.fail_after(10):
                while (await client.get_job(job.id)).status is not JobStatus.completed:
                    await anyio.sleep(0.02)
            worker.stop()
    finally:
        await backend.close()

    assert steps[:3] == ["register", "started", "lease"]
    assert steps.count("started") == 1


async def test_cancel_request_stops_retry(
    backend_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker checks cancel requests once a minute here, so the run fails
    # before the worker stops it.
    monkeypatch.setattr("bananas_core.worker.CONTROL_INTERVAL", 60)
    caplog.set_level("INFO", logger="bananas_core.worker")
    async with start_system(make_settings(backend_url, key_prefix)) as system:
        job = await system.client.submit("fail", {"seconds": 0.5}, max_retries=3)
        await system.wait_until_started(job)
        assert (await system.client.cancel(job.id))[0] == "requested"

        final = await system.wait_for(job, {JobStatus.cancelled, JobStatus.pending, JobStatus.scheduled})

    assert final.status is JobStatus.cancelled
    assert (final.attempts, final.retries) == (1, 0)
    assert final.error is not None and final.error.type == "RuntimeError"
    assert any("instead of retrying it" in record.getMessage() for record in caplog.records)


async def test_job_counters_reach_the_backend(system: System) -> None:
    job = await system.client.submit("echo", {})
    await system.wait_for(job)

    with anyio.fail_after(5):
        while True:
            metrics = await system.client.backend.job_metrics()
            if metrics.get("outcome|default|echo|completed"):
                break
            await anyio.sleep(0.1)

    assert metrics["run_count|default|echo"] >= 1
    assert metrics["wait_count|default|echo"] >= 1


async def test_wait_returns_when_job_finishes(system: System) -> None:
    job = await system.client.submit("async_sleep", {"seconds": 0.2})

    started = anyio.current_time()
    finished = await system.client.wait(job.id, timeout=10)
    elapsed = anyio.current_time() - started

    assert finished.status is JobStatus.completed
    assert elapsed < 1.0


async def test_progress_reports_reach_the_job(system: System) -> None:
    job = await system.client.submit("report_progress", {"steps": 4})

    done = await system.wait_for(job)

    assert done.status is JobStatus.completed
    assert done.progress == 1.0
    assert done.progress_message == "step 4 of 4"


async def test_handler_sees_cancel_request_flag(system: System) -> None:
    job = await system.client.submit("wait_for_cancel_flag", {})
    await system.wait_for(job, {JobStatus.processing})

    await system.client.cancel(job.id)
    cancelled = await system.wait_for(job, {JobStatus.cancelled}, timeout=5)

    assert cancelled.status is JobStatus.cancelled


async def test_handler_defaults_and_schema_apply(system: System) -> None:
    job = await system.client.submit("greet", {"name": "Ada", "times": 2})

    done = await system.wait_for(job)

    assert job.priority.value == "high"
    assert job.max_retries == 7
    assert job.timeout == 12
    assert done.result == "hello Ada hello Ada"


async def test_schema_rejects_payload_at_submission(system: System) -> None:
    with pytest.raises(InvalidPayload) as raised:
        await system.client.submit("greet", {"times": "many"})

    fields = {problem["field"] for problem in raised.value.errors}
    assert fields == {"name", "times"}
