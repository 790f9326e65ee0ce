"""Sample the bananas worker, the enqueue client and the API with py-spy, and list hot spots.

    python -m benchmarks.profile_bananas [--py-spy PATH] [--jobs 20000] [--seconds 6]

py-spy is not a project dependency: install it anywhere (``pip install py-spy``) and pass
its path, or put it on PATH. Each profile is written as py-spy's raw (collapsed stack)
text under the output directory, and the functions with the largest share of samples are
printed: inclusive (the function or anything it calls) and self (the function's own code).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import time
from pathlib import Path

from benchmarks import http_load
from benchmarks.environments import BENCH_DIR, DEFAULT_VENVS_DIR, ROOT
from benchmarks.queues.specs import SPECS, in_harness_environment
from benchmarks.run import stop_on_signals
from benchmarks.servers import RedisServer, Service, free_port
from benchmarks.workloads import Bench, Options, log

TOP = 25  # functions listed per profile


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_bananas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy executable"
    )
    parser.add_argument(
        "--jobs", type=int, default=20_000, help="jobs queued for the worker profile"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds each profile samples")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument(
        "--output",
        type=Path,
        default=BENCH_DIR / "results" / "profiles",
        help="directory for the raw profiles (default benchmarks/results/profiles)",
    )
    return parser


def summarize_raw(path: Path, top: int = TOP) -> str:
    """Return the ``top`` functions of a py-spy raw profile by inclusive and by self samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # Frames run from the outermost call to the innermost, each "function (file:line)".
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        for name in set(frames):
            inclusive[name] += count
        if frames:
            own[frames[-1]] += count
    if total == 0:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples", "", "inclusive %  self %  function"]
    for name, count in inclusive.most_common(top):
        lines.append(f"{100 * count / total:10.1f}  {100 * own[name] / total:6.1f}  {name}")
    lines += ["", "highest self time:"]
    for name, count in own.most_common(top // 2):
        lines.append(f"{100 * count / total:6.1f}  {name}")
    return "\n".join(lines)


def _function(frame: str) -> str:
    # "claim (bananas_core/backends/redis.py:126)" -> "claim (bananas_core/backends/redis.py)"
    name, _, location = frame.partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def _record(py_spy: str, pid: int, seconds: float, rate: int, path: Path) -> None:
    subprocess.run(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )


def profile_worker(bench: Bench, args: argparse.Namespace) -> Path:
    """Sample one worker while it drains a full queue."""
    bench.reset()
    bench.driver(
        "enqueue",
        "--count",
        str(args.jobs),
        "--mode",
        "bulk",
        "--key",
        "bench:profile",
        timeout=120 + args.jobs / 50,
    )
    (worker,) = bench.start_workers(1, "profile")
    try:
        deadline = time.monotonic() + 30
        while not bench.probe.client.get("bench:profile:first") and time.monotonic() < deadline:
            time.sleep(0.05)
        path = args.output / "worker.txt"
        _record(args.py_spy, worker.pid, args.seconds, args.rate, path)
    finally:
        bench.stop([worker])
    return path


def profile_client(bench: Bench, args: argparse.Namespace) -> Path:
    """Sample the driver while it enqueues jobs one at a time."""
    bench.reset()
    path = args.output / "enqueue.txt"
    argv = [
        args.py_spy,
        "record",
        "--rate",
        str(args.rate),
        "--format",
        "raw",
        "--output",
        str(path),
        "--",
        str(bench.bin / "python"),
        "-m",
        "benchmarks.driver",
        bench.spec.module,
        "enqueue",
        "--count",
        str(args.jobs // 2),
        "--mode",
        "single",
        "--key",
        "bench:profile",
    ]
    subprocess.run(argv, env=bench.env, cwd=ROOT, check=True, capture_output=True, timeout=600)
    return path


def profile_api(bench: Bench, args: argparse.Namespace) -> Path:
    """Sample ``bananas api`` under POST /jobs load."""
    bench.reset()
    port = free_port()
    env = {**bench.env, "API_HOST": "127.0.0.1", "API_PORT": str(port)}
    api = Service([str(bench.bin / "bananas"), "api"], env, ROOT, args.output / "api.log")
    base_url = f"http://127.0.0.1:{port}"
    path = args.output / "api.txt"
    try:
        time.sleep(3)  # start-up; the load below fails loudly if the API is not up
        load = subprocess.Popen(
            [
                "wrk",
                "--threads",
                "1",
                "--connections",
                "10",
                "--duration",
                f"{round(args.seconds) + 2}s",
                "--script",
                str(http_load.WRK_SCRIPT),
                base_url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        _record(args.py_spy, api.pid, args.seconds, args.rate, path)
        load.wait(timeout=60)
    finally:
        api.stop()
    return path


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    stop_on_signals()
    args.output.mkdir(parents=True, exist_ok=True)
    options = Options(
        jobs=args.jobs,
        latency_jobs=0,
        latency_gap=0.02,
        latency_limit=20.0,
        reps=1,
        drain_limit=60,
        worker_processes=1,
        http_seconds=args.seconds,
        http_connections=10,
        http_tool="wrk",
        http_max_requests=0,
        venvs_dir=DEFAULT_VENVS_DIR,
        log_dir=args.output,
    )
    queue = RedisServer("queue", args.output)
    probe = RedisServer("probe", args.output)
    try:
        queue.start()
        probe.start()
        bench = Bench(in_harness_environment(SPECS["bananas"]), options, queue, probe)
        profiles = [profile_worker(bench, args), profile_client(bench, args)]
        if http_load.wrk_available():
            profiles.append(profile_api(bench, args))
        else:
            log("wrk not found: the API profile is skipped")
    finally:
        queue.stop()
        probe.stop()
    for path in profiles:
        print(summarize_raw(path))
        print()


if __name__ == "__main__":
    main()
