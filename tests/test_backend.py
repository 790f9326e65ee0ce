"""The backend contract, run against the embedded backend and against real Redis."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import replace
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from pathlib import Path

import anyio
import pytest

from bananas_core.backends.base import Backend, Recorded, RunOutcome
from bananas_core.backends.keys import WAKEUP_TOKENS_MAX
from bananas_core.backends.memory import memory_backend
from bananas_core.backends.redis import RedisBackend
from bananas_core.errors import BackendError, JobNotFound
from bananas_core.job import Job, JobError, JobStatus, NewJob, new_job, new_job_draft
from redis.exceptions import ResponseError

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[RedisBackend]:
    if request.param == "memory":
        store = memory_backend(f"memory://contract-{uuid.uuid4().hex}", prefix=key_prefix, queue="default")
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisBackend.from_url(url, prefix=key_prefix, queue="default")
    yield store
    await store.close()


def make_job(name: str = "echo", priority: str = "normal", delay: float = 0.0, **payload: object) -> Job:
    return new_job(name, dict(payload), queue="default", priority=priority, delay=delay, max_retries=3, timeout=60)


async def test_enqueue_then_get_roundtrips_payload(backend: Backend) -> None:
    job = make_job(nested={"a": [1, 2, {}]}, text="ünïcode")

    stored, created = await backend.enqueue(job)
    fetched = await backend.get_job(job.id)

    assert created
    assert fetched.payload == {"nested": {"a": [1, 2, {}]}, "text": "ünïcode"}
    assert fetched.status is JobStatus.pending
    assert fetched.created_at == job.created_at


async def test_enqueue_same_id_keeps_first(backend: Backend) -> None:
    job = make_job(version=1)
    await backend.enqueue(job)

    stored, created = await backend.enqueue(job.model_copy(update={"payload": {"version": 2}}))

    assert not created
    assert stored.payload == {"version": 1}
    assert (await backend.counts()).normal == 1


def make_draft(priority: str = "normal", delay: float = 0.0, **payload: object) -> NewJob:
    return new_job_draft(
        "echo", dict(payload), queue="default", priority=priority, delay=delay, max_retries=3, timeout=60
    )


@pytest.mark.parametrize("delay", [0.0, 30.0])
def test_new_job_record_matches_its_model(delay: float) -> None:
    draft = make_draft(delay=delay, nested={"a": [1, 2.5, None]}, text="ünïcode")

    job = draft.to_job()

    assert draft.to_record() == job.to_record()
    assert job.status is (JobStatus.scheduled if delay else JobStatus.pending)
    assert Job.from_record(draft.to_record()) == job


async def test_submit_new_jobs_places_each_job(backend: RedisBackend) -> None:
    drafts = [make_draft("low", n=1), make_draft("high", n=2), make_draft(delay=60, n=3), make_draft("low", n=4)]

    returned = await backend.submit_new_jobs(drafts)

    assert returned == [draft.to_job() for draft in drafts]
    assert [await backend.get_job(draft.id) for draft in drafts] == returned
    assert await backend.client.lrange(backend.keys.low, 0, -1) == [drafts[0].id, drafts[3].id]
    assert await backend.client.lrange(backend.keys.high, 0, -1) == [drafts[1].id]
    assert await backend.client.zscore(backend.keys.scheduled, drafts[2].id) == drafts[2].run_at_ms
    assert await backend.client.llen(backend.keys.wakeup) == 1
    leased = await backend.claim(10, "w", 30)
    assert [job.id for job in leased] == [drafts[1].id, drafts[0].id, drafts[3].id]


async def test_delayed_new_job_pushes_no_token(backend: RedisBackend) -> None:
    await backend.submit_new_jobs([make_draft(delay=60)])

    assert await backend.client.exists(backend.keys.wakeup) == 0


@pytest.mark.redis
async def test_new_jobs_keep_wakeup_limit(backend: RedisBackend) -> None:
    for _ in range(WAKEUP_TOKENS_MAX + 6):
        await backend.submit_new_jobs([make_draft()])

    assert await backend.client.llen(backend.keys.wakeup) == WAKEUP_TOKENS_MAX


async def test_new_jobs_wrong_key_type_fails(backend: RedisBackend) -> None:
    await backend.client.set(backend.keys.normal, "not a list")

    with pytest.raises(BackendError, match="WRONGTYPE"):
        await backend.submit_new_jobs([make_draft()])

    # The connection that carried the transaction stays in step with the server.
    assert await backend._round_trip(("ECHO", "next")) == "next"


async def test_new_job_with_taken_id_logs(backend: RedisBackend, caplog: pytest.LogCaptureFixture) -> None:
    first = make_draft(n=1)
    await backend.submit_new_jobs([first])

    await backend.submit_new_jobs([replace(make_draft(n=2), id=first.id)])

    assert "Stored 0 of 1 new jobs in queue default as new" in caplog.text


async def test_get_unknown_job_raises(backend: Backend) -> None:
    with pytest.raises(JobNotFound, match="'missing' not found"):
        await backend.get_job("missing")


async def test_claim_takes_priorities_in_order(backend: Backend) -> None:
    jobs = [make_job(priority=p) for p in ("low", "normal", "high", "normal", "high")]
    for job in jobs:
        await backend.enqueue(job)

    first = await backend.claim(3, "w", 30)
    rest = await backend.claim(10, "w", 30)

    assert [j.id for j in first] == [jobs[2].id, jobs[4].id, jobs[1].id]
    assert [j.id for j in rest] == [jobs[3].id, jobs[0].id]
    assert all(j.status is JobStatus.processing and j.attempts == 1 and j.token == 1 for j in first)


async def test_claim_on_empty_queue_returns_nothing(backend: Backend) -> None:
    assert await backend.claim(5, "w", 30) == []


async def test_stale_token_cannot_complete(backend: Backend) -> None:
    job = make_job()
    await backend.enqueue(job)
    [leased] = await backend.claim(1, "w", 30)
    stale = leased.model_copy(update={"token": leased.token - 1})

    rejected = await backend.complete(stale, {"stale": True})
    accepted = await backend.complete(leased, {"fresh": True})

    assert not rejected
    assert accepted
    assert (await backend.get_job(job.id)).result == {"fresh": True}


async def test_exchange_records_and_leases_together(backend: Backend) -> None:
    done, retried, dead, stale, waiting = (make_job() for _ in range(5))
    for job in (done, retried, dead, stale):
        await backend.enqueue(job)
    leased = {job.id: job for job in await backend.claim(4, "w", 30)}
    await backend.enqueue(waiting)
    error = JobError(type="RuntimeError", message="boom").model_dump_json()
    outcomes = [
        RunOutcome(leased[done.id], "completed", '{"n": 1}'),
        RunOutcome(leased[retried.id], "retry", error, 0.0),
        RunOutcome(leased[dead.id], "dead", error),
        RunOutcome(leased[stale.id].model_copy(update={"token": 0}), "completed", ""),
    ]

    recorded, next_jobs = await backend.exchange(outcomes, 5, "w", 30)

    assert recorded == [True, True, True, False]
    # The retry that is due at once goes back to its queue and is leased in the same call.
    assert [job.id for job in next_jobs] == [waiting.id, retried.id]
    assert (await backend.get_job(done.id)).result == {"n": 1}
    assert (await backend.get_job(retried.id)).retries == 1
    assert (await backend.get_job(dead.id)).status is JobStatus.dead
    assert (await backend.get_job(stale.id)).status is JobStatus.processing
    assert (await backend.counts()).processing == 3


async def test_exchange_schedules_a_later_retry(backend: Backend) -> None:
    job = make_job()
    await backend.enqueue(job)
    [leased] = await backend.claim(1, "w", 30)
    error = JobError(type="RuntimeError", message="boom").model_dump_json()

    recorded, next_jobs = await backend.exchange([RunOutcome(leased, "retry", error, 60)], 1, "w", 30)

    stored = await backend.get_job(job.id)
    assert recorded == [True]
    assert next_jobs == []
    assert stored.status is JobStatus.scheduled
    assert stored.run_at is not None and stored.error is not None
    assert (await backend.counts()).scheduled == 1


async def test_expired_lease_is_requeued_and_fences_old_worker(backend: Backend) -> None:
    job = make_job()
    await backend.enqueue(job)
    [first] = await backend.claim(1, "w1", 0.05)
    await anyio.sleep(0.1)

    returned = await backend.requeue_expired(100, 3)
    [second] = await backend.claim(1, "w2", 30)
    lost = await backend.heartbeat([first], 30)

    assert returned == [(job.id, "requeued")]
    assert second.token == first.token + 1
    assert second.attempts == 2
    assert lost == [job.id]
    assert not await backend.complete(first, "late")
    assert not await backend.fail(first, JobError(type="E", message="late"), None)
    assert await backend.complete(second, "on time")


async def test_expired_leases_return_in_queue_order(backend: Backend) -> None:
    jobs = [make_job(n=n) for n in range(3)]
    for job in jobs:
        await backend.enqueue(job)
    await backend.claim(3, "w1", 0.05)
    await anyio.sleep(0.1)

    await backend.requeue_expired(100, 3)
    again = await backend.claim(3, "w2", 30)

    assert [job.id for job in again] == [job.id for job in jobs]


async def test_heartbeat_keeps_lease_alive(backend: Backend) -> None:
    await backend.enqueue(make_job())
    [leased] = await backend.claim(1, "w", 0.2)

    for _ in range(3):
        await anyio.sleep(0.1)
        assert await backend.heartbeat([leased], 0.2) == []
        assert await backend.requeue_expired(100, 3) == []

    assert (await backend.counts()).processing == 1


async def test_fail_with_retry_schedules_then_promotes(backend: Backend) -> None:
    job = make_job()
    await backend.enqueue(job)
    [leased] = await backend.claim(1, "w", 30)
    assert await backend.fail(leased, JobError(type="RuntimeError", message="boom"), 0.1)
    scheduled = await backend.get_job(job.id)
    early = await backend.promote_due(100)
    await anyio.sleep(0.15)
    promoted = await backend.promote_due(100)
    pending = await backend.get_job(job.id)

    assert scheduled.status is JobStatus.scheduled
    assert scheduled.retries == 1
    assert scheduled.error is not None and scheduled.error.message == "boom"
    assert early == 0
    assert promoted == 1
    assert pending.status is JobStatus.pending
    assert pending.run_at is None


async def test_fail_without_retry_goes_dead(backend: Backend) -> None:
    job = make_job()
    await backend.enqueue(job)
    [leased] = await backend.claim(1, "w", 30)

    await backend.fail(leased, JobError(type="RuntimeError", message="boom"), None)
    counts = await backend.counts()

    assert (await backend.get_job(job.id)).status is JobStatus.dead
    assert (counts.dead, counts.processing, counts.scheduled) == (1, 0, 0)


async def test_promotion_happens_once_across_schedulers(backend: Backend) -> None:
    jobs = [make_job(delay=0.05) for _ in range(200)]
    for job in jobs:
        await backend.enqueue(job)
    await anyio.sleep(0.1)
    moved: list[int] = []

    async def scheduler() -> None:
        moved.append(await backend.promote_due(7))
        while (count := await backend.promote_due(7)) > 0:
            moved.append(count)

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(scheduler)

    counts = await backend.counts()
    assert sum(moved) == 200
    assert counts.normal == 200
    assert counts.scheduled == 0


async def test_release_puts_job_at_head(backend: Backend) -> None:
    first, second = make_job(), make_job()
    await backend.enqueue(first)
    await backend.enqueue(second)
    [leased] = await backend.claim(1, "w", 30)

    assert await backend.release(leased)
    [again] = await backend.claim(1, "w", 30)

    assert again.id == first.id
    assert again.attempts == 1


async def test_release_cancels_job_with_cancel_request(backend: Backend) -> None:
    job, behind = make_job(), make_job()
    await backend.enqueue(job)
    await backend.enqueue(behind)
    [leased] = await backend.claim(1, "w", 30)
    assert (await backend.cancel_job(job.id))[0] == "requested"

    released = await backend.release(leased)

    assert released is Recorded.cancelled
    cancelled = await backend.get_job(job.id)
    assert cancelled.status is JobStatus.cancelled
    assert cancelled.finished_at is not None
    assert cancelled.attempts == 0
    assert cancelled.started_at is None
    assert await backend.cancel_requested_at(leased) is None
    [next_leased] = await backend.claim(10, "w", 30)
    assert next_leased.id == behind.id


async def test_purge_deletes_only_expired_finished_jobs(backend: Backend) -> None:
    done, waiting = make_job(), make_job()
    await backend.enqueue(done)
    [leased] = await backend.claim(1, "w", 30)
    await backend.complete(leased, 1)
    await backend.enqueue(waiting)

    kept = await backend.purge_finished(3600, 3600, 100)
    deleted = await backend.purge_finished(0, 0, 100)

    assert kept == 0
    assert deleted == 1
    with pytest.raises(JobNotFound):
        await backend.get_job(done.id)
    assert (await backend.get_job(waiting.id)).status is JobStatus.pending


async def test_cancel_records_server_time(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller's clock reads 1970, and the script takes Redis's clock instead.
    monkeypatch.setattr("bananas_core.backends.redis.now_ms", lambda: 0)
    job = make_job()
    await backend.enqueue(job)

    outcome, cancelled = await backend.cancel_job(job.id)

    assert outcome == "cancelled"
    assert cancelled.finished_at is not None
    assert abs(cancelled.finished_at.timestamp() - time.time()) < 60


async def test_wait_for_jobs_wakes_on_enqueue(backend: Backend) -> None:
    woke_after: list[float] = []

    async def waiter() -> None:
        started = anyio.current_time()
        await backend.wait_for_jobs(5)
        woke_after.append(anyio.current_time() - started)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.sleep(0.1)
        await backend.enqueue(make_job())

    assert woke_after[0] < 2


@pytest.mark.redis
async def test_every_key_shares_the_queue_hash_tag(redis_url: str, key_prefix: str) -> None:
    store = RedisBackend.from_url(redis_url, prefix=key_prefix, queue="reports")
    try:
        await store.enqueue(make_job().model_copy(update={"queue": "reports"}))
        await store.enqueue(make_job(delay=60).model_copy(update={"queue": "reports"}))
        [leased] = await store.claim(1, "w", 30)
        await store.fail(leased, JobError(type="E", message="x"), None)
        keys = [key async for key in store.client.scan_iter(match=f"{key_prefix}:*")]
    finally:
        await store.close()

    queue_keys = [key for key in keys if key != f"{key_prefix}:queues"]
    assert queue_keys
    assert all(key.startswith(f"{key_prefix}:{{reports}}:") for key in queue_keys)


@pytest.mark.redis
async def test_submit_relists_queue_after_data_loss(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitter = RedisBackend.from_url(redis_url, prefix=key_prefix, queue="default")
    reader = RedisBackend.from_url(redis_url, prefix=key_prefix, queue="default")
    draft = new_job_draft("echo", {}, queue="reports", max_retries=3, timeout=60)
    unique = [new_job("echo", {"n": n}, queue="reports", max_retries=3, timeout=60) for n in range(2)]
    try:
        await submitter.submit_new_jobs([new_job_draft("echo", {}, queue="reports", max_retries=3, timeout=60)])
        await submitter.submit_jobs([unique[0]], ["first"], 60)
        # Redis lost its data: the set of queues in use is gone with it.
        await submitter.client.delete(f"{key_prefix}:queues")

        await submitter.submit_new_jobs([draft])
        found_after_transaction = await reader.get_job(draft.id)
        await submitter.client.delete(f"{key_prefix}:queues")
        await submitter.submit_jobs([unique[1]], ["second"], 60)
        found_by_submitter = await submitter.get_job(unique[1].id)
        monkeypatch.setattr("bananas_core.backends.redis.QUEUE_SET_REFRESH", 0.0)
        await submitter.submit_jobs([new_job("echo", {}, queue="reports", max_retries=3, timeout=60)], ["third"], 60)
        found_after_refresh = await reader.get_job(unique[1].id)
    finally:
        await submitter.close()
        await reader.close()

    assert found_after_transaction.queue == "reports"
    assert found_by_submitter.queue == "reports"
    assert found_after_refresh.id == unique[1].id


async def test_unreachable_redis_raises_backend_error() -> None:
    # Port 1 on loopback has no server, so the connection is refused at once.
    store = RedisBackend.from_url("redis://127.0.0.1:1/0", prefix="bananas-unreachable", queue="default")
    try:
        with pytest.raises(BackendError, match="Redis at redis://127.0.0.1:1/0 failed in ping"):
            await store.ping()
    finally:
        await store.close()


@pytest.fixture
def unix_socket_redis(tmp_path: Path, private_redis: Callable[[], Any]) -> str:
    """Start a private redis-server on a Unix socket and return its unix:// URL."""
    private_redis()
    return f"unix://{tmp_path / 'redis.sock'}"


async def test_unix_socket_url_reaches_redis(unix_socket_redis: str) -> None:
    store = RedisBackend.from_url(unix_socket_redis, prefix="bananas", queue="default")
    try:
        job = make_job()
        await store.enqueue(job)
        [leased] = await store.claim(1, "w", 30)
        assert await store.complete(leased, "over a socket")
        assert (await store.get_job(job.id)).result == "over a socket"
    finally:
        await store.close()


async def test_job_whose_worker_dies_repeatedly_goes_dead(backend: Backend) -> None:
    job = make_job()
    await backend.enqueue(job)
    outcomes = []

    for _ in range(3):
        leased = await backend.claim(1, "w", 0.01)
        assert [j.id for j in leased] == [job.id]
        await anyio.sleep(0.03)
        outcomes += await backend.requeue_expired(100, 3)

    dead = await backend.get_job(job.id)
    assert outcomes == [(job.id, "requeued"), (job.id, "requeued"), (job.id, "dead")]
    assert dead.status is JobStatus.dead
    assert dead.crashes == 3
    assert dead.error is not None and dead.error.type == "PoisonJob"
    assert (await backend.counts()).dead == 1


@pytest.mark.redis
async def test_corrupt_records_do_not_stall_the_queue(redis_url: str, key_prefix: str) -> None:
    store = RedisBackend.from_url(redis_url, prefix=key_prefix, queue="default")
    try:
        good = make_job()
        await store.client.rpush(store.keys.normal, "corrupt")
        await store.client.hset(store.keys.jobs, "corrupt", "{not json")
        await store.client.zadd(store.keys.scheduled, {"corrupt-scheduled": 0})
        await store.client.hset(store.keys.jobs, "corrupt-scheduled", "[")
        await store.enqueue(good)

        promoted = await store.promote_due(100)
        leased = await store.claim(5, "w", 30)
    finally:
        await store.close()

    assert promoted == 1
    assert [job.id for job in leased] == [good.id]


async def test_retry_with_zero_delay_is_queued_at_once(backend: Backend) -> None:
    job = make_job()
    await backend.enqueue(job)
    [leased] = await backend.claim(1, "w", 30)

    await backend.fail(leased, JobError(type="E", message="again"), 0)
    [again] = await backend.claim(1, "w", 30)

    assert again.id == job.id
    assert again.retries == 1
    assert again.attempts == 2


async def test_expired_job_with_cancel_request_is_cancelled(backend: RedisBackend) -> None:
    job = make_job()
    await backend.enqueue(job)
    await backend.claim(1, "w", 0.01)
    await backend.client.hset(f"{backend.keys.base}:cancel_requests", job.id, 1)
    await anyio.sleep(0.03)

    outcomes = await backend.requeue_expired(100, 3)

    assert outcomes == [(job.id, "cancelled")]
    assert (await backend.get_job(job.id)).status is JobStatus.cancelled
    assert (await backend.counts()).normal == 0


async def test_scripts_reload_after_script_flush() -> None:
    # The embedded server: flushing the script cache of the shared Redis would disturb others.
    backend = memory_backend(f"scripts-{uuid.uuid4().hex}", prefix="bananas", queue="default")
    try:
        await backend.enqueue(make_job())
        await backend.client.script_flush()

        leased = await backend.claim(1, "w", 30)

        assert len(leased) == 1
    finally:
        await backend.close()


async def test_wait_and_lease_gets_new_job(backend: Backend) -> None:
    job = make_job()

    async def submit_later() -> None:
        await anyio.sleep(0.1)
        await backend.enqueue(job)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(submit_later)
        with anyio.fail_after(4):
            leased = await backend.wait_and_lease(5, 3, "w", 30)

    assert [each.id for each in leased] == [job.id]
    assert leased[0].status is JobStatus.processing


async def test_interrupt_wait_ends_an_idle_wait(backend: Backend) -> None:
    async def interrupt_later() -> None:
        await anyio.sleep(0.1)
        await backend.interrupt_wait("w")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(interrupt_later)
        with anyio.fail_after(4):
            leased = await backend.wait_and_lease(5, 3, "w", 30)

    assert leased == []


async def test_exchange_repeat_reports_recorded(backend: Backend) -> None:
    done, retried, dead = (make_job() for _ in range(3))
    for job in (done, retried, dead):
        await backend.enqueue(job)
    leased = {job.id: job for job in await backend.claim(3, "w", 30)}
    error = JobError(type="RuntimeError", message="boom").model_dump_json()
    outcomes = [
        RunOutcome(leased[done.id], "completed", '{"n": 1}'),
        RunOutcome(leased[retried.id], "retry", error, 60),
        RunOutcome(leased[dead.id], "dead", error),
    ]
    await backend.exchange(outcomes, 0, "w", 30)

    # The worker sends the same outcomes again, as after a reply lost on the way back.
    recorded, _ = await backend.exchange(outcomes, 0, "w", 30)
    other_result, _ = await backend.exchange(
        [RunOutcome(leased[done.id], "completed", '{"n": 2}')], 0, "w", 30
    )

    assert recorded == [True, True, True]
    assert other_result == [False]
    assert (await backend.get_job(retried.id)).retries == 1


async def test_retry_gives_way_to_a_cancel_request(backend: Backend) -> None:
    job = make_job()
    await backend.enqueue(job)
    [leased] = await backend.claim(1, "w", 30)
    assert (await backend.cancel_job(job.id))[0] == "requested"
    error = JobError(type="RuntimeError", message="boom").model_dump_json()
    retry = RunOutcome(leased, "retry", error, 0.0)

    recorded, next_jobs = await backend.exchange([retry], 1, "w", 30)
    repeated, _ = await backend.exchange([retry], 0, "w", 30)  # as after a lost reply

    stored = await backend.get_job(job.id)
    assert recorded == [Recorded.cancelled]
    assert repeated == [Recorded.cancelled]
    assert next_jobs == []
    assert stored.status is JobStatus.cancelled
    assert stored.error is not None and stored.error.message == "boom"
    assert stored.retries == 0
    counts = await backend.queue_counts("default")
    assert (counts.normal, counts.scheduled, counts.processing, counts.cancelled) == (0, 0, 0, 1)


async def test_repeat_after_later_cancel_reports_recorded(backend: Backend) -> None:
    # The retry was recorded, its reply was lost, and a caller cancelled the waiting job.
    job = make_job()
    await backend.enqueue(job)
    [leased] = await backend.claim(1, "w", 30)
    error = JobError(type="RuntimeError", message="boom").model_dump_json()
    retry = RunOutcome(leased, "retry", error, 60)
    await backend.exchange([retry], 0, "w", 30)
    assert (await backend.cancel_job(job.id))[0] == "cancelled"

    repeated, _ = await backend.exchange([retry], 0, "w", 30)

    assert repeated == [Recorded.recorded]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Return a starter of redis-servers of this test's own, on a Unix socket in ``tmp_path``.

    Every server it started is stopped at teardown, also when the test failed early.
    """
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    socket_path = tmp_path / "redis.sock"
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        socket_path.unlink(missing_ok=True)
        process = subprocess.Popen(
            [server, "--port", "0", "--unixsocket", str(socket_path), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )
        started.append(process)
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert time.monotonic() < deadline, "redis-server did not create its socket within 10s"
            time.sleep(0.02)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a stopped server does not act on SIGTERM
            process.terminate()
            process.wait(10)


async def test_script_after_restart_reconnects(tmp_path: Path, private_redis: Callable[[], Any]) -> None:
    # The script connection idles while the server restarts, so its socket is closed.
    process = private_redis()
    store = RedisBackend.from_url(f"unix://{tmp_path / 'redis.sock'}", prefix="bananas", queue="default")
    try:
        await store.enqueue(make_job())
        process.terminate()
        process.wait(10)
        private_redis()
        await anyio.sleep(0.05)  # the event loop receives the old socket's end

        job = make_job()
        _, created = await store.enqueue(job)

        assert created
        assert (await store.get_job(job.id)).status is JobStatus.pending
    finally:
        await store.close()


@pytest.mark.redis
async def test_cancelled_call_leaves_no_stale_reply(redis_url: str, key_prefix: str) -> None:
    store = RedisBackend.from_url(redis_url, prefix=key_prefix, queue="default")
    try:
        with anyio.move_on_after(0.05):
            await store._round_trip(("BLPOP", f"{key_prefix}:{{default}}:never", 0.3))
        await anyio.sleep(0.4)  # the BLPOP's empty reply has arrived by now

        assert await store._round_trip(("ECHO", "next")) == "next"
    finally:
        await store.close()


@pytest.mark.redis
async def test_error_reply_keeps_connection(redis_url: str, key_prefix: str) -> None:
    store = RedisBackend.from_url(redis_url, prefix=key_prefix, queue="default")
    key = f"{key_prefix}:{{default}}:text"
    try:
        await store._round_trip(("SET", key, "not a number"))
        with pytest.raises(ResponseError, match="not an integer"):
            await store._round_trip(("INCR", key))

        assert await store._round_trip(("ECHO", "next")) == "next"
        assert len(store._idle_connections) == 1
    finally:
        await store.close()


@pytest.mark.redis
async def test_large_command_round_trips(redis_url: str, key_prefix: str) -> None:
    # Writes of 64 KiB or more go through redis-py's own send, which can wait for the buffer.
    store = RedisBackend.from_url(redis_url, prefix=key_prefix, queue="default")
    text = "x" * 200_000
    try:
        assert await store._round_trip(("ECHO", text)) == text
        assert await store._round_trip(("ECHO", "small")) == "small"
    finally:
        await store.close()


@pytest.mark.redis
async def test_wakeup_list_keeps_at_most_its_limit(backend: RedisBackend) -> None:
    for _ in range(WAKEUP_TOKENS_MAX + 6):
        await backend.enqueue(make_job())

    assert await backend.client.llen(backend.keys.wakeup) == WAKEUP_TOKENS_MAX


@pytest.mark.redis
async def test_lease_that_empties_the_queue_deletes_wakeup_tokens(backend: RedisBackend) -> None:
    jobs = [make_job(priority=priority) for priority in ("high", "normal", "low")]
    for job in jobs:
        await backend.enqueue(job)
    assert await backend.client.llen(backend.keys.wakeup) == 3

    leased = await backend.claim(10, "w", 30)

    assert [job.id for job in leased] == [job.id for job in jobs]
    assert await backend.client.exists(backend.keys.wakeup) == 0


@pytest.mark.redis
async def test_lease_that_leaves_jobs_keeps_a_wakeup_token(backend: RedisBackend) -> None:
    # The lease takes all it asked for from the high list, which is then empty, and leaves
    # the normal job for another worker.
    for priority in ("high", "high", "normal"):
        await backend.enqueue(make_job(priority=priority))
    await backend.client.delete(backend.keys.wakeup)

    leased = await backend.claim(2, "w", 30)

    assert [job.priority.value for job in leased] == ["high", "high"]
    assert await backend.client.llen(backend.keys.wakeup) == 1


async def test_stalled_server_fails_at_url_timeout(tmp_path: Path, private_redis: Callable[[], Any]) -> None:
    # A stopped server accepts the command into its socket but never replies.
    process = private_redis()
    url = f"unix://{tmp_path / 'redis.sock'}?socket_timeout=0.3"
    store = RedisBackend.from_url(url, prefix="bananas", queue="default")
    try:
        # Two calls at once leave two idle script connections, one for each call below.
        async with anyio.create_task_group() as group:
            group.start_soon(store.claim, 1, "w", 30)
            group.start_soon(store.claim, 1, "w", 30)
        assert len(store._idle_connections) == 2
        process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(BackendError, match="no reply from Redis within 0.3s"):
            await store.claim(1, "w", 30)
        with pytest.raises(BackendError, match="no reply from Redis within 0.3s"):
            await store.wait_and_lease(0.1, 1, "w", 30)  # two replies, one deadline
        elapsed = time.monotonic() - started
        process.send_signal(signal.SIGCONT)
        await store.enqueue(job := make_job())

        assert 0.6 <= elapsed < 3
        assert [leased.id for leased in await store.claim(1, "w", 30)] == [job.id]
    finally:
        process.send_signal(signal.SIGCONT)
        await store.close()


async def test_busy_connection_sends_no_ping(tmp_path: Path, private_redis: Callable[[], Any]) -> None:
    private_redis()
    url = f"unix://{tmp_path / 'redis.sock'}?health_check_interval=1"
    store = RedisBackend.from_url(url, prefix="bananas", queue="default")
    try:
        await store.claim(1, "w", 30)  # a new connection checks its health once
        await store._round_trip(("CONFIG", "RESETSTAT"))
        for _ in range(25):
            await store.claim(1, "w", 30)
            await anyio.sleep(0.1)
        stats = await store._round_trip(("INFO", "commandstats"))
    finally:
        await store.close()

    # The script connection replies every 0.1 s, so it is never idle for the 1 s interval.
    assert "cmdstat_ping" not in stats, stats
