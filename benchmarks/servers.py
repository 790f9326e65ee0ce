"""Private redis-server processes on free loopback ports, and the worker processes under test."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

# The shared development and test server; benchmarks never touch it.
SHARED_REDIS_PORT = 6379


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, never the shared Redis port."""
    for _ in range(20):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != SHARED_REDIS_PORT:
            return port
    raise RuntimeError("could not find a free TCP port on 127.0.0.1")


class RedisServer:
    """A redis-server child process on 127.0.0.1 without persistence, stopped with ``stop()``."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"redis-{name}.log"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix=f"bananas-bench-redis-{name}-")
        self.process: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis.from_url(self.url, decode_responses=True)

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found on PATH; install it (Debian: apt-get install redis-server)"
            )
        argv = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
        ]
        if _major_version(binary) >= 7:
            # Redis 7 allocates a latency histogram (about 28 KiB) for each command on its first
            # call and frees them all on CONFIG RESETSTAT, which would move INFO used_memory
            # by hundreds of KiB between two memory readings.
            argv += ["--latency-tracking", "no"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server {self.name} exited at start-up; see {self.log_path}"
                )
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(
            f"redis-server {self.name} did not respond to PING within {timeout:g}s; see {self.log_path}"
        )

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def cpu_seconds(self) -> float:
        """Return the CPU time, user and system, that the server has used since it started."""
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def command_calls(self) -> dict[str, int]:
        """Return the calls of each command since the last ``CONFIG RESETSTAT``.

        Commands that Lua scripts call are counted too, under their own names.
        """
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _major_version(binary: str) -> int:
    # Prints for example "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 ...".
    output = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"v=(\d+)\.", output)
    return int(match.group(1)) if match else 0


class Service:
    """A command started in its own process group, so that its children stop with it."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started = time.time()

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_running(self) -> None:
        """Raise RuntimeError with the log's tail if the process has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{' '.join(self.argv)} exited with status {self.process.returncode}:\n"
                + tail(self.log_path)
            )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process group with SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.process.poll() is not None:
            return
        # The group id is the pid of the process this object started (start_new_session).
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Children that outlived their parent (pool processes) share the group id.
        _signal_group(self.process.pid, signal.SIGKILL)


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                children += [int(child) for child in file.read().split()]
    except OSError:
        pass
    return children


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its descendants, from /proc (Linux only)."""
    tree = [pid]
    index = 0
    while index < len(tree):
        tree += _children(tree[index])
        index += 1
    return tree


def tree_memory(pid: int) -> dict[str, int]:
    """Return the summed RSS and PSS in bytes of ``pid`` and its descendants, and their count.

    RSS counts pages shared between a parent and its forked children once per process, so
    for multi-process workers the PSS sum (each shared page split between its users) is the
    fairer total.
    """
    totals = {"rss": 0, "pss": 0, "processes": 0}
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup") as file:
                for line in file:
                    field, _, value = line.partition(":")
                    if field in ("Rss", "Pss"):
                        totals[field.lower()] += int(value.split()[0]) * 1024
        except OSError:
            continue
        totals["processes"] += 1
    return totals
