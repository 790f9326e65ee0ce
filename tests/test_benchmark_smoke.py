"""Smoke test of the benchmark harness: the bananas workloads with tiny counts.

The harness starts its own redis-server on a free loopback port, so this test needs the
redis-server binary but neither the shared Redis nor the queues' own environments. It checks
that every workload produces figures and makes no claim about their size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# It starts bananas workers and the API as processes, like the end-to-end tests.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
JOBS = 50


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed in CI; the benchmark smoke test needs it")
        pytest.skip("redis-server is not installed; the benchmark harness starts its own")

    output = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--queues",
        "bananas",
        # The project's environment: a new one would be installed from the package index.
        "--bananas-env",
        "harness",
        "--jobs",
        str(JOBS),
        "--latency-jobs",
        "20",
        "--reps",
        "1",
        "--worker-processes",
        "2",
        "--http-seconds",
        "1",
        "--http-tool",
        "httpx",
        "--http-max-requests",
        "50",
        "--output",
        str(output),
    ]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=80, check=False
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "## Throughput" in completed.stdout
    return json.loads((output / "results.json").read_text())


def test_smoke_run_has_no_errors(results: dict) -> None:
    bananas = results["queues"]["bananas"]

    assert bananas.get("errors") is None
    assert bananas["versions"]["bananas"]


def test_smoke_drain_figures(results: dict) -> None:
    (drain,) = results["queues"]["bananas"]["drain"]

    assert drain["runs"] == JOBS
    assert drain["completed_records"] == JOBS
    assert drain["enqueue_rate"] > 0
    assert drain["drain_rate"] > 0
    assert drain["queued_bytes_per_job"] > 0
    assert drain["worker_rss"] > 0


def test_smoke_multi_process_drain(results: dict) -> None:
    (drain,) = results["queues"]["bananas"]["drain_multi"]

    assert drain["processes"] == 2
    assert drain["runs"] == JOBS
    assert drain["drain_rate"] > 0


def test_smoke_command_counts(results: dict) -> None:
    (commands,) = results["queues"]["bananas"]["commands"]

    assert commands["per_command"]["evalsha"] > 0
    assert commands["round_trips_per_job"] > 0


def test_smoke_latency_figures(results: dict) -> None:
    latency = results["queues"]["bananas"]["latency"]
    (run,) = latency["runs"]

    assert run["missing"] == 0
    assert run["p50_ms"] > 0
    assert run["p99_ms"] >= run["p50_ms"]
    assert latency["idle_rss"] > 0


def test_smoke_http_figures(results: dict) -> None:
    single, batch = results["queues"]["bananas"]["http"]

    assert single["endpoint"] == "POST /jobs"
    assert single["requests"] > 0
    assert single["errors"] == 0
    assert single["stored"] == single["requests"]
    assert batch["endpoint"].startswith("POST /jobs/batch")
    assert batch["requests"] > 0
    assert batch["errors"] == 0
    assert batch["stored"] == batch["requests"] * batch["jobs_per_request"]


def test_pickup_pair_reports_both_sides(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed in CI; the pickup comparison needs it")
        pytest.skip("redis-server is not installed; the pickup comparison starts its own")

    # Side b runs a copy, so the check of which bananas_core each worker imported has to pass.
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "bananas_core", tree / "bananas_core")
    command = [
        sys.executable, "-m", "benchmarks.pickup_pair", "--b", str(tree), "--jobs", "5",
        "--output", str(tmp_path / "logs"),
    ]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=80)

    assert completed.returncode == 0, completed.stderr[-4000:]
    assert f"worker a ran {ROOT / 'bananas_core'}" in completed.stdout
    assert f"worker b ran {tree / 'bananas_core'}" in completed.stdout
    rows = [line for line in completed.stdout.splitlines() if line.startswith(("| a |", "| b |"))]
    assert len(rows) == 2
    for row in rows:
        # side, checkout, jobs, p50, p95, p99
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2] == "5"
        assert float(cells[3]) > 0
    assert "p50 of b minus p50 of a" in completed.stdout


def test_script_cost_lists_the_lease(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed in CI; the script cost tool needs it")
        pytest.skip("redis-server is not installed; the script cost tool starts its own")

    command = [sys.executable, "-m", "benchmarks.script_cost", "--jobs", "3", "--gap", "0.001"]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)

    rows = [line.split() for line in completed.stdout.splitlines()]
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert [row[2] for row in rows if row[:2] == ["EVALSHA", "lease"]] == ["1.00", "1.00"]
    assert [row[1] for row in rows if row[:1] == ["BRPOP"]] == ["1.00", "1.00"]
    assert completed.stdout.count("from the submit to the lease, per job") == 4
