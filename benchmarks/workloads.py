"""The workloads: each starts the queue's own processes, measures, and stops them again.

Every measurement begins on an empty queue server (FLUSHALL on the private server) and uses
probe keys of its own, so runs do not see each other's jobs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import http_load
from benchmarks.driver import RESULT_PREFIX
from benchmarks.environments import ROOT, bin_dir, service_env
from benchmarks.probe import drain_mark
from benchmarks.queues.specs import BANANAS_KEY_PREFIX, QueueSpec
from benchmarks.servers import RedisServer, Service, free_port, tail, tree_memory
from benchmarks.stats import percentile

# bananas' Lua scripts: the commands they call are not counted as round trips.
BANANAS_LUA_DIR = ROOT / "bananas_core" / "backends" / "lua"
# Commands the harness itself sends to the queue server while measuring.
HARNESS_COMMANDS = frozenset({"info", "config", "flushall"})
SCRIPT_CALLS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"})

SETTLE_SECONDS = 0.5


@dataclass
class Options:
    """Counts, limits and paths of one harness run; ``benchmarks.run --help`` explains each."""

    jobs: int
    latency_jobs: int
    latency_gap: float  # mean seconds between latency submissions (exponential gaps)
    latency_limit: float  # seconds after which a latency run submits no more jobs
    reps: int
    drain_limit: float  # seconds a drain may take before it is cut short
    worker_processes: int
    http_seconds: float
    http_connections: int
    http_tool: str
    http_max_requests: int
    venvs_dir: Path
    log_dir: Path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    """Runs the workloads of one queue against the queue and probe servers."""

    def __init__(
        self, spec: QueueSpec, options: Options, queue: RedisServer, probe: RedisServer
    ) -> None:
        self.spec = spec
        self.options = options
        self.queue = queue
        self.probe = probe
        self.bin = bin_dir(spec, options.venvs_dir)
        self.env = service_env(spec, queue.url, probe.url)

    # -- processes ---------------------------------------------------------------------

    def driver(self, *args: str, timeout: float) -> dict[str, Any]:
        """Run ``benchmarks.driver`` in the queue's environment and return its JSON result."""
        argv = [str(self.bin / "python"), "-m", "benchmarks.driver", self.spec.module, *args]
        completed = subprocess.run(
            argv,
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if completed.returncode != 0 or not lines:
            raise RuntimeError(
                f"{self.spec.name} driver {' '.join(args)} failed with status "
                f"{completed.returncode}:\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
            )
        return json.loads(lines[-1].removeprefix(RESULT_PREFIX))

    def worker_argv(self) -> list[str]:
        program, *arguments = self.spec.worker
        return [
            str(self.bin / program),
            *(a.replace("{redis_url}", self.queue.url) for a in arguments),
        ]

    def start_workers(self, count: int, label: str) -> list[Service]:
        """Start one worker process, or for ``count`` > 1 ``bananas worker --processes count``."""
        log_path = self.options.log_dir / f"{self.spec.name}-{label}-worker0.log"
        argv = self.worker_argv()
        if count > 1:
            # The supervisor runs the worker processes; its process tree is measured as one.
            argv = [*argv, "--processes", str(count)]
        return [Service(argv, self.env, ROOT, log_path)]

    @staticmethod
    def stop(services: list[Service]) -> None:
        for service in services:
            service.stop()

    def reset(self) -> None:
        self.queue.client.flushall()
        self.probe.client.flushall()

    # -- workloads -----------------------------------------------------------------------

    def enqueue_and_drain(self, rep: int, processes: int = 1) -> dict[str, Any]:
        """Enqueue ``jobs`` one at a time (timed), then drain them with ``processes`` workers.

        Also measures Redis memory per queued job, the commands Redis ran during the drain,
        and the workers' memory after it. A drain still running after ``drain_limit``
        seconds is cut short: its rate is the runs so far over the time so far.
        """
        jobs = self.options.jobs
        key = f"bench:drain:{uuid.uuid4().hex[:8]}"
        self.reset()
        memory_before = self.queue.used_memory()
        cpu_before_enqueue = self.queue.cpu_seconds()
        enqueued = self.driver(
            "enqueue",
            "--count",
            str(jobs),
            "--mode",
            "single",
            "--key",
            key,
            timeout=60 + jobs / 20,
        )
        memory_queued = self.queue.used_memory()
        cpu_before_drain = self.queue.cpu_seconds()
        clock_before_drain = time.monotonic()
        self.queue.client.config_resetstat()

        label = f"drain{processes}-rep{rep}"
        spawned = time.time()
        workers = self.start_workers(processes, label)
        try:
            runs, end = self._wait_for_drain(key, workers)
            cpu_after_drain = self.queue.cpu_seconds()
            clock_after_drain = time.monotonic()
            if runs == jobs:
                time.sleep(SETTLE_SECONDS)  # lets the last acknowledgement reach Redis
            commands = self.queue.command_calls()
            memory = [tree_memory(worker.pid) for worker in workers]
            completed = self._bananas_completed()
        finally:
            self.stop(workers)
        # Read after the workers disconnected, so their connection buffers are not counted.
        memory_after = self.queue.used_memory()

        first = float(self.probe.client.get(f"{key}:first") or "nan")
        mark = drain_mark(jobs)
        mark_time = float(self.probe.client.get(f"{key}:mark") or "nan")
        seconds = end - first
        return {
            "jobs": jobs,
            "runs": runs,
            "processes": processes,
            "enqueue_seconds": enqueued["seconds"],
            "enqueue_rate": jobs / enqueued["seconds"],
            "drain_seconds": seconds,
            # From the first run to the last, start-up ramp included.
            "drain_rate_all": runs / seconds,
            # From run number ``mark`` to the last: the rate once every worker is up.
            "drain_rate": (runs - mark) / (end - mark_time) if runs > mark else runs / seconds,
            "startup_seconds": first - spawned,
            # Redis CPU time per job, in microseconds: its cost on the server side.
            "enqueue_redis_cpu_us": 1e6 * (cpu_before_drain - cpu_before_enqueue) / jobs,
            "drain_redis_cpu_us": 1e6 * (cpu_after_drain - cpu_before_drain) / runs,
            # Cores Redis kept busy during the drain: near 1, Redis is the bottleneck.
            "drain_redis_cpu_share": (cpu_after_drain - cpu_before_drain)
            / (clock_after_drain - clock_before_drain),
            "queued_bytes_per_job": (memory_queued - memory_before) / jobs,
            # Jobs left in the queue after a cut-short drain would count as kept.
            "retained_bytes_per_job": (memory_after - memory_before) / jobs
            if runs == jobs
            else None,
            "commands": _queue_commands(commands),
            "worker_rss": sum(m["rss"] for m in memory),
            "worker_pss": sum(m["pss"] for m in memory),
            "worker_process_count": sum(m["processes"] for m in memory),
            "completed_records": completed,
        }

    def _wait_for_drain(self, key: str, workers: list[Service]) -> tuple[int, float]:
        """Wait until every job ran or ``drain_limit`` passed; return the runs and the end time."""
        jobs = self.options.jobs
        deadline = time.monotonic() + self.options.drain_limit
        while time.monotonic() < deadline:
            for worker in workers:
                worker.check_running()
            item = self.probe.client.blpop([f"{key}:done"], timeout=1)
            if item is not None:
                return jobs, float(item[1])

        end = time.time()
        runs = int(self.probe.client.get(key) or 0)
        if runs == 0:
            raise RuntimeError(
                f"{self.spec.name}: no job ran within {self.options.drain_limit:g}s; "
                f"worker log:\n{tail(workers[0].log_path)}"
            )
        log(
            f"{self.spec.name}: drain cut short after {self.options.drain_limit:g}s, {runs} of {jobs} jobs ran"
        )
        return runs, end

    def _bananas_completed(self) -> int | None:
        # A cross-check that bananas recorded every run it reported: the completed set's size.
        if not self.spec.name.startswith("bananas"):
            return None
        return int(self.queue.client.zcard(f"{BANANAS_KEY_PREFIX}:{{default}}:completed"))

    def round_trips(self) -> dict[str, Any]:
        """Time bare redis-py round trips from one process: the baseline of a single enqueue."""
        return self.driver("ping", "--count", str(self.options.jobs), timeout=60 + self.options.jobs / 100)

    def bulk_enqueue(self) -> dict[str, Any]:
        """Time the queue's bulk enqueue API on ``jobs`` jobs."""
        self.reset()
        key = f"bench:bulk:{uuid.uuid4().hex[:8]}"
        result = self.driver(
            "enqueue",
            "--count",
            str(self.options.jobs),
            "--mode",
            "bulk",
            "--key",
            key,
            timeout=60 + self.options.jobs / 20,
        )
        self.reset()
        return {"seconds": result["seconds"], "rate": self.options.jobs / result["seconds"]}

    def latency(self, rep: int) -> dict[str, Any]:
        """Measure pickup latency once on a fresh idle worker, and that worker's idle memory."""
        self.reset()
        options = self.options
        (worker,) = self.start_workers(1, f"latency-rep{rep}")
        try:
            warmup = self.driver("warmup", "--key", "bench:warmup", "--timeout", "60", timeout=120)
            if not warmup["ready"]:
                raise RuntimeError(
                    f"{self.spec.name}: the warm-up job did not run within 60s:\n{tail(worker.log_path)}"
                )
            time.sleep(1.0)  # idle: no job running, start-up finished
            idle = tree_memory(worker.pid)
            key = f"bench:latency:{rep}:{uuid.uuid4().hex[:8]}"
            result = self.driver(
                "latency",
                "--count",
                str(options.latency_jobs),
                "--gap",
                str(options.latency_gap),
                "--limit",
                str(options.latency_limit),
                "--seed",
                str(rep + 1),
                "--key",
                key,
                "--timeout",
                "60",
                timeout=options.latency_limit + 120,
            )
            worker.check_running()
        finally:
            self.stop([worker])
        return {
            "run": _latency_figures(result),
            "idle_rss": idle["rss"],
            "idle_pss": idle["pss"],
            "idle_processes": idle["processes"],
        }

    def http(self) -> list[dict[str, Any]]:
        """Measure ``POST /jobs`` and ``POST /jobs/batch`` on one ``bananas api`` process, ``reps`` times each."""
        self.reset()
        options = self.options
        port = free_port()
        env = {**self.env, "API_HOST": "127.0.0.1", "API_PORT": str(port)}
        log_path = options.log_dir / "bananas-api.log"
        api = Service([str(self.bin / "bananas"), "api"], env, ROOT, log_path)
        base_url = f"http://127.0.0.1:{port}"
        runs = []
        try:
            _wait_for_http(base_url, api, timeout=30)
            jobs_key = f"{BANANAS_KEY_PREFIX}:{{default}}:jobs"
            for _ in range(options.reps):
                for endpoint in http_load.ENDPOINTS:
                    stored_before = self.queue.client.hlen(jobs_key)
                    run = self._http_run(base_url, endpoint)
                    run["stored"] = self.queue.client.hlen(jobs_key) - stored_before
                    runs.append(run)
                    api.check_running()
        finally:
            api.stop()
        return runs

    def _http_run(self, base_url: str, endpoint: http_load.Endpoint) -> dict[str, Any]:
        options = self.options
        use_wrk = options.http_tool == "wrk" or (
            options.http_tool == "auto" and http_load.wrk_available()
        )
        if use_wrk:
            return http_load.run_wrk(
                base_url, options.http_seconds, options.http_connections, endpoint
            )
        return http_load.run_httpx(
            base_url, options.http_seconds, options.http_connections, options.http_max_requests,
            endpoint,
        )


def _queue_commands(commands: dict[str, int]) -> dict[str, int]:
    # Redis 7 names subcommands "config|resetstat"; the harness's own commands are left out.
    return {
        name: calls
        for name, calls in commands.items()
        if name.split("|")[0] not in HARNESS_COMMANDS
    }


def _latency_figures(result: dict[str, Any]) -> dict[str, Any]:
    latencies = result["latencies"]
    counts = {"samples": len(latencies), "missing": result["missing"]}
    if not latencies:
        return {**counts, "p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {
        **counts,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


def _wait_for_http(base_url: str, api: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        api.check_running()
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"bananas api did not respond on {base_url} within {timeout:g}s:\n{tail(api.log_path)}"
    )


def command_breakdown(commands: dict[str, int], jobs: int, spec: QueueSpec) -> dict[str, Any]:
    """Summarise one drain's INFO commandstats per job.

    For bananas, round trips are all commands less those run inside its Lua scripts. The
    scripts of other queues are not classified, so only their totals and script calls are given.
    """
    total = sum(commands.values())
    scripts = sum(calls for name, calls in commands.items() if name in SCRIPT_CALLS)
    figures: dict[str, Any] = {
        "commands_per_job": total / jobs,
        "script_calls_per_job": scripts / jobs,
        "per_command": {
            name: calls / jobs
            for name, calls in sorted(commands.items(), key=lambda item: -item[1])
        },
    }
    if spec.name.startswith("bananas"):
        in_scripts = bananas_script_commands()
        inner = sum(calls for name, calls in commands.items() if name in in_scripts)
        figures["round_trips_per_job"] = (total - inner) / jobs
    return figures


def bananas_script_commands() -> frozenset[str]:
    """Return the lower-case names of the commands that bananas' Lua scripts call.

    NOTE: a command that the worker also sends directly (outside a script) is counted as a
    script command, so the round trips are a lower bound if such a command shows up.
    """
    names = set()
    for script in BANANAS_LUA_DIR.glob("*.lua"):
        names.update(
            match.lower()
            for match in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", script.read_text())
        )
    return frozenset(names)
