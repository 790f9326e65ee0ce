"""Bananas services started as processes, the way a user starts them, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis

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

    def start(self, service: str, name: str | None = None, **extra_env: str) -> subprocess.Popen[bytes]:
        """Start ``bananas SERVICE`` as a process known as ``name`` (default: the service)."""
        return self.start_command([service], name or service, **extra_env)

    def start_command(self, arguments: list[str], name: str, **extra_env: str) -> subprocess.Popen[bytes]:
        """Start ``bananas ARGUMENTS...`` as a process known as ``name``."""
        log = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(
            [BANANAS, *arguments], env={**self.env, **extra_env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        log.close()
        self.processes[name] = process
        return process

    def kill(self, name: str) -> int:
        """Send SIGKILL to the process ``name``, as a crash or the OOM killer would. Returns its pid."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()
        return process.pid

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
