"""Load generators for ``POST /jobs`` and ``POST /jobs/batch``: wrk when it is installed, else
an httpx async loop.

Both stop after a fixed time, and the httpx loop also after a fixed number of requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.stats import percentile

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post_job.lua"
JOB_BODY = {"name": "bench_job", "payload": {"key": "bench:http", "total": 0}}
BATCH_JOBS = 100  # jobs in one POST /jobs/batch request: the API's default MAX_BATCH_JOBS


@dataclass(frozen=True)
class Endpoint:
    """A request the load generators repeat."""

    label: str
    path: str
    body: dict[str, Any]
    jobs_per_request: int


ENDPOINTS = (
    Endpoint("POST /jobs", "/jobs", JOB_BODY, 1),
    Endpoint(
        f"POST /jobs/batch, {BATCH_JOBS} jobs", "/jobs/batch", {"jobs": [JOB_BODY] * BATCH_JOBS},
        BATCH_JOBS,
    ),
)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(base_url: str, seconds: float, connections: int, endpoint: Endpoint) -> dict[str, object]:
    """Run wrk with one thread for ``seconds`` against ``endpoint`` and return its figures."""
    argv = [
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--script",
        str(WRK_SCRIPT),
        base_url,
    ]
    env = {**os.environ, "BENCH_PATH": endpoint.path, "BENCH_BODY": json.dumps(endpoint.body)}
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False, env=env
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(
            f"wrk failed with status {completed.returncode}:\n{completed.stdout}{completed.stderr}"
        )
    figures = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    elapsed = figures["duration_us"] / 1e6
    return {
        "tool": f"wrk -t1 -c{connections}",
        "endpoint": endpoint.label,
        "jobs_per_request": endpoint.jobs_per_request,
        "requests": figures["requests"],
        "seconds": elapsed,
        "rate": figures["requests"] / elapsed,
        "errors": figures["non_2xx"] + figures["socket_errors"],
        "p50_ms": figures["p50_us"] / 1000,
        "p95_ms": figures["p95_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000,
    }


def run_httpx(
    base_url: str, seconds: float, connections: int, max_requests: int, endpoint: Endpoint
) -> dict[str, object]:
    """Run ``connections`` concurrent request loops for ``seconds`` or ``max_requests`` in all."""
    return asyncio.run(_httpx_load(base_url, seconds, connections, max_requests, endpoint))


async def _httpx_load(
    base_url: str, seconds: float, connections: int, max_requests: int, endpoint: Endpoint
) -> dict[str, object]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline and len(latencies) + errors < max_requests:
            started = time.perf_counter()
            try:
                response = await client.post(endpoint.path, json=endpoint.body)
            except httpx.HTTPError:
                errors += 1
                continue
            if response.status_code == 201:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
        started = time.perf_counter()
        await asyncio.gather(*(loop(client) for _ in range(connections)))
        elapsed = time.perf_counter() - started

    if not latencies:
        raise RuntimeError(f"no {endpoint.label} succeeded against {base_url} ({errors} errors)")
    return {
        "tool": f"httpx, {connections} concurrent loops",
        "endpoint": endpoint.label,
        "jobs_per_request": endpoint.jobs_per_request,
        "requests": len(latencies) + errors,
        "seconds": elapsed,
        "rate": (len(latencies) + errors) / elapsed,
        "errors": errors,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }
