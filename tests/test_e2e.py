"""End to end: `bananas api`, `bananas worker` and `bananas scheduler` as separate processes
on real Redis, driven over HTTP the way a user drives them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
BANANAS = str(Path(sys.executable).parent / "bananas")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Services:
    """The three services started as processes, with their logs kept for failure reports."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.base_url = f"http://127.0.0.1:{env['API_PORT']}"
        self.http = httpx.Client(base_url=self.base_url, timeout=10)
        self.redis = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)

    def start(self, service: str, **extra_env: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{service}.log", "ab")
        process = subprocess.Popen(
            [BANANAS, service], env={**self.env, **extra_env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        log.close()
        self.processes[service] = process
        return process

    def wait_until_api_answers(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"API did not answer within {timeout}s:\n{self.logs()}")

    def submit(self, name: str, payload: dict[str, Any], **options: Any) -> dict[str, Any]:
        response = self.http.post("/jobs", json={"name": name, "payload": payload, **options})
        assert response.status_code == 201, response.text
        return response.json()

    def wait_for(self, job_id: str, statuses: tuple[str, ...] = ("completed", "dead"), timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"/jobs/{job_id}").json()
            if job.get("status") in statuses:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not {statuses} within {timeout}s: {job}\n{self.logs()}")

    def stamps(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.redis.lrange(key, 0, -1)]

    def stop(self, service: str, timeout: float = 30) -> int:
        process = self.processes.pop(service)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{service} did not stop within {timeout}s after SIGTERM:\n{self.logs()}")

    def close(self) -> None:
        for service in list(self.processes):
            process = self.processes.pop(service)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.http.close()
        self.redis.close()

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-4000:]}" for path in sorted(self.log_dir.glob("*.log")))


def make_services(redis_url: str, key_prefix: str, log_dir: Path, **settings: str) -> Services:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "KEY_PREFIX": key_prefix,
        "API_PORT": str(free_port()),
        "PLUGINS": "tests.handlers",
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "INFO",
        **settings,
    }
    return Services(env, log_dir)


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

        exit_code = services.stop("worker")
        after_stop = {job["id"]: services.http.get(f"/jobs/{job['id']}").json() for job in [finishing, *unfinished, *queued]}
        counts = services.http.get("/queues").json()["queues"][0]
        services.start("worker", WORKER_CONCURRENCY="10")
        finished = [services.wait_for(job["id"]) for job in [finishing, *unfinished, *queued]]
    finally:
        services.close()

    assert exit_code == 0
    assert after_stop[finishing["id"]]["status"] == "completed"
    assert all(after_stop[job["id"]]["status"] == "pending" for job in unfinished + queued)
    assert counts["processing"] == 0
    assert all(job["status"] == "completed" for job in finished)
    assert finished[0]["attempts"] == 1
