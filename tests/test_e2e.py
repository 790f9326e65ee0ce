"""End to end: `bananas api`, `bananas worker` and `bananas scheduler` as separate processes
on real Redis, driven over HTTP the way a user drives them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Services, make_services

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def services(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Services]:
    running = make_services(redis_url, key_prefix, tmp_path, WORKER_CONCURRENCY="1")
    for service in ("api", "worker", "scheduler"):
        running.start(service)
    running.wait_until_api_answers()
    yield running
    running.close()


def test_plugin_job_completes_with_result(services: Services) -> None:
    records = [{"region": "eu", "amount": 10}, {"region": "us", "amount": 30}, {"region": "eu", "amount": 20}]

    job = services.submit("process_data", {"records": records, "value": "amount", "group_by": "region"})
    done = services.wait_for(job["id"])

    assert done["status"] == "completed", done
    assert done["result"]["count"] == 3
    assert done["result"]["sum"] == 60
    assert done["result"]["groups"]["eu"]["sum"] == 30
    assert done["attempts"] == 1


def test_failures_retry_at_2_4_8_seconds_then_dead(services: Services, key_prefix: str) -> None:
    key = f"{key_prefix}:stamps"

    job = services.submit("stamp", {"key": key, "tag": "retry", "fail": True}, max_retries=3)
    dead = services.wait_for(job["id"], timeout=40)
    starts = [stamp["time"] for stamp in services.stamps(key)]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]

    assert dead["status"] == "dead"
    assert dead["attempts"] == 4
    assert dead["error"]["type"] == "RuntimeError"
    assert "failed on purpose" in dead["error"]["message"]
    assert services.http.get("/queues").json()["queues"][0]["dead"] == 1
    assert len(gaps) == 3
    # Each retry is due after its backoff plus up to 10% jitter, and the scheduler's
    # one-second tick adds up to a second more.
    for gap, backoff in zip(gaps, (2, 4, 8)):
        assert backoff - 0.1 <= gap <= backoff * 1.1 + 1.5, gaps


def test_high_priority_runs_before_normal_and_low(services: Services, key_prefix: str) -> None:
    key = f"{key_prefix}:order"
    blocker = services.submit("async_sleep", {"seconds": 1})
    services.wait_for(blocker["id"], ("processing",))

    submitted = [
        services.submit("stamp", {"key": key, "tag": f"{priority}-{number}"}, priority=priority)
        for number, priority in enumerate(["low", "normal", "high", "low", "high", "normal"])
    ]
    for job in submitted:
        services.wait_for(job["id"])

    order = [stamp["tag"] for stamp in services.stamps(key)]
    assert order == ["high-2", "high-4", "normal-1", "normal-5", "low-0", "low-3"]


def test_timeout_fails_job_and_frees_slot(services: Services) -> None:
    slow = services.submit("async_sleep", {"seconds": 60}, timeout="1s", max_retries=0)
    quick = services.submit("echo", {"after": "timeout"})

    dead = services.wait_for(slow["id"], timeout=15)
    done = services.wait_for(quick["id"], timeout=15)

    assert dead["status"] == "dead"
    assert dead["error"]["type"] == "JobTimeout"
    assert "timeout of 1s" in dead["error"]["message"]
    assert done["status"] == "completed"


def test_sigterm_with_running_jobs_loses_nothing(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    services = make_services(redis_url, key_prefix, tmp_path, WORKER_CONCURRENCY="3", SHUTDOWN_GRACE="1")
    try:
        services.start("api")
        services.start("scheduler")
        services.start("worker")
        services.wait_until_api_answers()
        finishing = services.submit("async_sleep", {"seconds": 0.5})
        unfinished = [services.submit("async_sleep", {"seconds": 3}) for _ in range(2)]
        queued = [services.submit("echo", {"n": n}) for n in range(5)]
        for job in [finishing, *unfinished]:
            services.wait_for(job["id"], ("processing",))
        # Redis shows a job as processing once it is leased, a moment before a slot starts it,
        # and a stopping worker returns a leased job that no slot has started.
        time.sleep(0.2)

        exit_code = services.stop("worker")
        after_stop = {job["id"]: services.http.get(f"/jobs/{job['id']}").json() for job in [finishing, *unfinished, *queued]}
        counts = services.http.get("/queues").json()["queues"][0]
        services.start("worker", WORKER_CONCURRENCY="10")
        finished = [services.wait_for(job["id"]) for job in [finishing, *unfinished, *queued]]
    finally:
        services.close()

    assert exit_code == 0
    assert after_stop[finishing["id"]]["status"] == "completed"
    assert all(after_stop[job["id"]]["status"] == "pending" for job in unfinished)
    # The slot the finishing job freed may take queued jobs before the SIGTERM arrives.
    assert all(after_stop[job["id"]]["status"] in ("pending", "completed") for job in queued)
    assert counts["processing"] == 0
    assert all(job["status"] == "completed" for job in finished)
    assert finished[0]["attempts"] == 1


def test_worker_processes_share_the_queue(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    services = make_services(redis_url, key_prefix, tmp_path, WORKER_CONCURRENCY="2")
    key = f"{key_prefix}:pids"
    try:
        services.start("api")
        supervisor = services.start_command(["worker", "--processes", "3"], "worker")
        services.wait_until_api_answers()
        jobs = [services.submit("stamp_pid", {"key": key, "seconds": 0.3}) for _ in range(12)]
        finished = [services.wait_for(job["id"]) for job in jobs]
        pids = set(services.redis.smembers(key))
        exit_code = services.stop("worker")
    finally:
        services.close()

    assert all(job["status"] == "completed" for job in finished)
    assert len(pids) == 3
    assert supervisor.pid not in {int(pid) for pid in pids}
    assert exit_code == 0


def test_supervisor_restarts_a_killed_worker(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    services = make_services(redis_url, key_prefix, tmp_path, WORKER_CONCURRENCY="1", LEASE_TIMEOUT="2s")
    key = f"{key_prefix}:pids"
    try:
        services.start("api")
        services.start("scheduler")
        services.start_command(["worker", "--processes", "2"], "worker")
        services.wait_until_api_answers()
        first = [services.submit("stamp_pid", {"key": key, "seconds": 0.3}) for _ in range(6)]
        for job in first:
            services.wait_for(job["id"])
        victim = int(next(iter(services.redis.smembers(key))))
        os.kill(victim, signal.SIGKILL)
        services.redis.delete(key)

        later = [services.submit("stamp_pid", {"key": key, "seconds": 0.3}) for _ in range(8)]
        finished = [services.wait_for(job["id"]) for job in later]
        pids = {int(pid) for pid in services.redis.smembers(key)}
    finally:
        services.close()

    assert all(job["status"] == "completed" for job in finished)
    assert victim not in pids
    assert len(pids) == 2
