"""Chaos suite: real worker, scheduler and Redis processes killed and restarted while jobs flow.

Each test prints its figures. Run it alone with ``pytest -m chaos -s``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import anyio
import pytest
import redis

from bananas_core.client import Client
from bananas_core.errors import BackendError
from bananas_core.settings import load_settings
from tests.chaos.conftest import PrivateRedis
from tests.services import Services, make_services

pytestmark = pytest.mark.chaos

PREFIX = "chaos"


def chaos_services(server: PrivateRedis, log_dir: Path, **settings: str) -> Services:
    return make_services(
        server.url, PREFIX, log_dir, PLUGINS="tests.chaos.handlers", LOG_LEVEL="WARNING", **settings
    )


async def submit_jobs(url: str, count: int, milliseconds: int) -> list[str]:
    """Submit ``count`` chaos_work jobs that each sleep ``milliseconds``; return their ids."""
    settings = load_settings(REDIS_URL=url, KEY_PREFIX=PREFIX, PLUGINS="tests.chaos.handlers")
    async with Client(settings) as client:
        return [(await client.submit("chaos_work", {"ms": milliseconds})).id for _ in range(count)]


def counts(url: str) -> dict[str, int]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        base = f"{PREFIX}:{{default}}"
        return {
            "completed": client.zcard(f"{base}:completed"),
            "dead": client.zcard(f"{base}:dead"),
            "processing": client.zcard(f"{base}:processing"),
            "queued": sum(client.llen(f"{base}:{p}") for p in ("high", "normal", "low")),
            "scheduled": client.zcard(f"{base}:scheduled"),
        }
    finally:
        client.close()


def settled(url: str) -> bool:
    """Return True when no job is queued, scheduled or running."""
    current = counts(url)
    return current["queued"] + current["scheduled"] + current["processing"] == 0


def completions_and_starts(url: str, job_ids: list[str]) -> tuple[dict[str, int], dict[str, list[int]]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        completions = {job_id: int(n) for job_id, n in client.hgetall(f"{PREFIX}:chaos:completions").items()}
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.lrange(f"{PREFIX}:chaos:starts:{job_id}", 0, -1)
        starts = {job_id: [int(pid) for pid in pids] for job_id, pids in zip(job_ids, pipe.execute())}
        return completions, starts
    finally:
        client.close()


def wait_until(condition, timeout: float, services: Services, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s\n{services.logs()}")
        time.sleep(0.1)


def test_sigkill_workers_and_scheduler_lose_nothing(private_redis: PrivateRedis, tmp_path: Path) -> None:
    # A short lease brings killed workers' jobs back quickly; the poison threshold is raised
    # because this test kills healthy jobs on purpose, many times.
    services = chaos_services(
        private_redis, tmp_path, WORKER_CONCURRENCY="5", LEASE_TIMEOUT="2s", POISON_THRESHOLD="50"
    )
    job_ids = anyio.run(submit_jobs, private_redis.url, 2000, 100)
    killed_pids: set[int] = set()
    kills = scheduler_restarts = 0
    started = time.monotonic()
    try:
        services.start("scheduler")
        for number in range(3):
            services.start("worker", f"worker-{number}")

        while counts(private_redis.url)["completed"] < len(job_ids):
            assert time.monotonic() - started < 240, f"jobs did not complete: {counts(private_redis.url)}\n{services.logs()}"
            time.sleep(2)
            victim = f"worker-{kills % 3}"
            killed_pids.add(services.kill(victim))
            services.start("worker", victim)
            kills += 1
            if kills % 4 == 0:
                services.kill("scheduler")
                services.start("scheduler")
                scheduler_restarts += 1
    finally:
        services.close()
    elapsed = time.monotonic() - started

    completions, starts = completions_and_starts(private_redis.url, job_ids)
    duplicates = {job_id: n for job_id, n in completions.items() if n > 1}
    final = counts(private_redis.url)
    print(
        f"\nSIGKILL chaos: {len(job_ids)} jobs in {elapsed:.1f}s, {kills} worker kills, "
        f"{scheduler_restarts} scheduler restarts, {len(duplicates)} jobs ran to the end twice, "
        f"final counts {final}"
    )

    assert final["completed"] == len(job_ids)
    assert final["dead"] == 0
    assert all(completions.get(job_id, 0) >= 1 for job_id in job_ids)
    for job_id in duplicates:
        # A second full run only happens when an earlier run was in a worker that was killed.
        assert set(starts[job_id]) & killed_pids, (job_id, starts[job_id])


def test_redis_restarts_lose_no_accepted_job(private_redis: PrivateRedis, tmp_path: Path) -> None:
    services = chaos_services(private_redis, tmp_path, WORKER_CONCURRENCY="5", LEASE_TIMEOUT="3s")
    accepted: list[str] = []
    recoveries: list[float] = []

    async def submit_steadily() -> None:
        settings = load_settings(REDIS_URL=private_redis.url, KEY_PREFIX=PREFIX, PLUGINS="tests.chaos.handlers")
        async with Client(settings) as client:
            while len(accepted) < 500:
                try:
                    accepted.append((await client.submit("chaos_work", {"ms": 20})).id)
                except BackendError:
                    await anyio.sleep(0.2)  # Redis is restarting: submit again shortly
                    continue
                await anyio.sleep(0.03)

    async def restart_redis_five_times() -> None:
        for _ in range(5):
            await anyio.sleep(2.5)
            await anyio.to_thread.run_sync(private_redis.stop)
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(private_redis.start)
            restarted = time.monotonic()
            before = await anyio.to_thread.run_sync(lambda: counts(private_redis.url)["completed"])
            with anyio.fail_after(30):
                while (await anyio.to_thread.run_sync(lambda: counts(private_redis.url)["completed"])) <= before:
                    await anyio.sleep(0.05)
            recoveries.append(time.monotonic() - restarted)

    async def run() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(submit_steadily)
            group.start_soon(restart_redis_five_times)

    try:
        services.start("scheduler")
        services.start("worker", "worker-0")
        services.start("worker", "worker-1")
        anyio.run(run)
        # A handler whose own Redis call failed during a restart is retried, so wait for an
        # empty queue too. A submission that failed on the client may still have been stored.
        wait_until(lambda: settled(private_redis.url) and counts(private_redis.url)["completed"] >= len(accepted),
                   90, services, "all accepted jobs completed")
    finally:
        services.close()

    completions, _ = completions_and_starts(private_redis.url, accepted)
    print(
        f"\nRedis restarts: {len(accepted)} accepted jobs, 5 restarts, workers consumed again "
        f"after {', '.join(f'{r:.2f}s' for r in recoveries)}; final counts {counts(private_redis.url)}"
    )
    assert len(recoveries) == 5
    assert all(completions.get(job_id, 0) >= 1 for job_id in accepted)
    assert counts(private_redis.url)["dead"] == 0


def test_repeated_sigterm_finishes_each_job_once(private_redis: PrivateRedis, tmp_path: Path) -> None:
    services = chaos_services(private_redis, tmp_path, WORKER_CONCURRENCY="5", SHUTDOWN_GRACE="0.3s")
    rng = random.Random(7)
    job_ids = anyio.run(submit_jobs, private_redis.url, 300, 150)
    stop_seconds: list[float] = []
    try:
        services.start("scheduler")
        for _ in range(10):
            services.start("worker")
            # SIGTERM arrives mid-burst, a random delay after the worker has leased jobs.
            wait_until(lambda: counts(private_redis.url)["processing"] > 0, 20, services, "a running job")
            time.sleep(rng.uniform(0.05, 0.6))
            stopping = time.monotonic()
            assert services.stop("worker", timeout=15) == 0
            stop_seconds.append(time.monotonic() - stopping)
        after_bursts = counts(private_redis.url)
        services.start("worker", WORKER_CONCURRENCY="20")
        wait_until(lambda: counts(private_redis.url)["completed"] == len(job_ids), 60, services, "all jobs completed")
    finally:
        services.close()

    completions, _ = completions_and_starts(private_redis.url, job_ids)
    print(
        f"\nSIGTERM bursts: 10 graceful stops took {min(stop_seconds):.2f}-{max(stop_seconds):.2f}s; "
        f"{after_bursts['completed']} of {len(job_ids)} jobs done before the last worker, "
        f"{after_bursts['processing']} left leased"
    )
    assert after_bursts["processing"] == 0
    assert sorted(completions) == sorted(job_ids)
    assert set(completions.values()) == {1}


def test_stuck_handlers_time_out_and_pool_recovers(private_redis: PrivateRedis, tmp_path: Path) -> None:
    services = make_services(private_redis.url, PREFIX, tmp_path, PLUGINS="tests.handlers", WORKER_CONCURRENCY="3")

    async def run() -> tuple[list, list]:
        settings = load_settings(REDIS_URL=private_redis.url, KEY_PREFIX=PREFIX, PLUGINS="tests.handlers")
        async with Client(settings) as client:
            stuck = [await client.submit(name, {"seconds": 60}, timeout=1, max_retries=0)
                     for name in ("cpu_loop", "cpu_loop", "cpu_loop", "blocking_sleep", "blocking_sleep", "blocking_sleep")]
            with anyio.fail_after(30):
                for job in stuck:
                    while (await client.get_job(job.id)).status.value != "dead":
                        await anyio.sleep(0.05)
            after = [await client.submit("async_sleep", {"seconds": 1}) for _ in range(3)]
            with anyio.fail_after(30):
                for job in after:
                    while (await client.get_job(job.id)).status.value != "completed":
                        await anyio.sleep(0.05)
            return [await client.get_job(j.id) for j in stuck], [await client.get_job(j.id) for j in after]

    try:
        services.start("worker")
        stuck, after = anyio.run(run)
    finally:
        services.close()

    runs = [(job.finished_at - job.started_at).total_seconds() for job in stuck]
    starts = sorted(job.started_at for job in after)
    spread = (starts[-1] - starts[0]).total_seconds()
    print(f"\nStuck handlers: stopped after {min(runs):.2f}-{max(runs):.2f}s; 3 jobs afterwards started within {spread:.3f}s")
    assert all(job.error is not None and job.error.type == "JobTimeout" for job in stuck)
    assert max(runs) < 3
    assert spread < 0.5


def test_worker_memory_stays_flat_over_failing_jobs(private_redis: PrivateRedis, tmp_path: Path) -> None:
    services = chaos_services(private_redis, tmp_path, WORKER_CONCURRENCY="10")
    total = 20_000

    async def submit_failing() -> None:
        settings = load_settings(REDIS_URL=private_redis.url, KEY_PREFIX=PREFIX, PLUGINS="tests.chaos.handlers")
        async with Client(settings) as client:
            for _ in range(total):
                await client.submit("always_fail", {}, max_retries=0)

    def rss_kib(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("VmRSS not found")

    try:
        anyio.run(submit_failing)
        worker = services.start("worker")
        wait_until(lambda: counts(private_redis.url)["dead"] >= 1000, 120, services, "1,000 dead jobs")
        after_first_thousand = rss_kib(worker.pid)
        wait_until(lambda: counts(private_redis.url)["dead"] >= total, 300, services, f"{total} dead jobs")
        at_end = rss_kib(worker.pid)
    finally:
        services.close()

    growth_mib = (at_end - after_first_thousand) / 1024
    print(f"\nMemory: worker RSS {after_first_thousand / 1024:.1f} MiB after 1,000 failing jobs, "
          f"{at_end / 1024:.1f} MiB after {total:,} ({growth_mib:+.1f} MiB)")
    assert growth_mib < 5
