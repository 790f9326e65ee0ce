"""`bananas dev`: the whole system in one process on the embedded backend, as the README runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.services import BANANAS, free_port

pytestmark = pytest.mark.e2e

def test_dev_runs_a_plugin_job_without_redis(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    env["API_PORT"] = str(port)
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([BANANAS, "dev"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)

            created = http.post(
                "/jobs",
                json={"name": "process_data", "payload": {"records": [{"v": 2}, {"v": 4}], "value": "v"}},
            ).json()
            deadline = time.monotonic() + 10
            while (job := http.get(f"/jobs/{created['id']}").json())["status"] != "completed":
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(20)

    logs = log_path.read_text()
    assert job["result"]["sum"] == 6
    assert exit_code == 0
    assert "Development mode on memory://dev" in logs
    assert "Loaded plugin data (bananas-data 0.1.0), handlers: process_data" in logs
