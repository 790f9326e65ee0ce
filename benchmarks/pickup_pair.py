"""Compare the pickup latency of two bananas source trees, measured side by side in one run.

On the 2-core machine of the reference run, the pickup p50 of the same code moved by 20 to 40
percent from one run to the next, more than most changes to the pickup path move it. Here one
worker from each tree runs on its own queue of one private redis-server, and one producer sends
jobs to the two in turn (A, B, B, A, ...) at random gaps. Both workers meet the same noise, so
the difference between them is the change's.

    python -m benchmarks.pickup_pair --a /path/to/main --b . --jobs 800

Each worker runs ``bananas worker`` from its tree in this interpreter's environment, with the
benchmark job and with the plugins of the development environment blocked, as ``benchmarks.run
--bananas-env harness`` runs it. The producer is this checkout's ``Client``, so the tool compares
the worker side of the pickup: from the submit's command on the wire to the handler's start.
Latency is the handler's start time minus the time read just before the submit call, as in
``benchmarks.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

from bananas_core.client import Client
from bananas_core.settings import load_settings
from benchmarks.probe import PROBE_URL_VARIABLE, latency_payload, wait_for_stamps
from benchmarks.servers import RedisServer, Service, tail

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("a", "b")
# Plugins of the development environment, which would trace and meter every job.
BLOCKED_PLUGINS = "otel,email,http,data"


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    trees = {"a": args.a.resolve(), "b": args.b.resolve()}
    for side, tree in trees.items():
        if not (tree / "bananas_core" / "worker.py").is_file():
            raise SystemExit(f"invalid --{side} {tree}: expected a checkout that contains bananas_core/")

    log_dir = Path(args.output or tempfile.mkdtemp(prefix="bananas-pickup-pair-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    queue_server = RedisServer("queue", log_dir)
    probe_server = RedisServer("probe", log_dir)
    workers: list[Service] = []
    try:
        queue_server.start()
        probe_server.start()
        for side in SIDES:
            workers.append(_start_worker(side, trees[side], queue_server.url, probe_server.url, log_dir))
        latencies = asyncio.run(_submit(args, queue_server.url, probe_server.url, workers))
    finally:
        for worker in workers:
            worker.stop()
        queue_server.stop()
        probe_server.stop()

    _report(trees, latencies)
    print(f"logs in {log_dir}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pickup_pair",
        description="Pickup latency of two bananas checkouts, measured side by side.",
    )
    parser.add_argument("--a", type=Path, default=ROOT, help="checkout A (default: this one)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B")
    parser.add_argument("--jobs", type=int, default=400, help="jobs per side (default 400)")
    parser.add_argument("--gap", type=float, default=0.02, help="mean seconds between jobs (default 0.02)")
    parser.add_argument("--output", type=Path, help="folder for the logs (default: a new temporary one)")
    return parser


def _start_worker(side: str, tree: Path, queue_url: str, probe_url: str, log_dir: Path) -> Service:
    env = {
        **os.environ,
        # The tree comes first, so that its bananas_core wins over the installed one.
        "PYTHONPATH": os.pathsep.join([str(tree), str(ROOT)]),
        "REDIS_URL": queue_url,
        "QUEUE": f"pair-{side}",
        "PLUGINS": "benchmarks.queues.bananas_app",
        "PLUGINS_BLOCK": BLOCKED_PLUGINS,
        "WORKER_CONCURRENCY": "10",
        "LOG_LEVEL": "WARNING",
        PROBE_URL_VARIABLE: probe_url,
    }
    argv = [sys.executable, "-c", "from bananas_core.cli import main; main(['worker'])"]
    return Service(argv, env, ROOT, log_dir / f"worker-{side}.log")


async def _submit(
    args: argparse.Namespace, queue_url: str, probe_url: str, workers: list[Service]
) -> dict[str, list[float]]:
    """Submit the jobs of both sides in turn and return each side's latencies in ms."""
    probe = redis.Redis.from_url(probe_url)
    settings = load_settings(REDIS_URL=queue_url, PLUGINS="", PLUGINS_BLOCK=BLOCKED_PLUGINS)
    submitted: dict[str, dict[int, float]] = {side: {} for side in SIDES}
    async with Client(settings) as client:
        # One job per side shows that its worker is up, and warms its connections.
        for side, worker in zip(SIDES, workers):
            key = f"pair:warmup:{side}"
            await client.submit("bench_job", latency_payload(key, 0), queue=f"pair-{side}")
            if not wait_for_stamps(probe, key, 1, timeout=60):
                worker.check_running()
                raise RuntimeError(f"worker {side} ran no job within 60 s:\n{tail(worker.log_path)}")
        await asyncio.sleep(1.0)

        gaps = random.Random(1)
        for index in range(2 * args.jobs):
            await asyncio.sleep(gaps.expovariate(1 / args.gap))
            # A, B, B, A: each side goes first as often as the other.
            side = SIDES[(index + index // 2) % 2]
            number = index // 2
            started = time.time()
            await client.submit("bench_job", latency_payload(f"pair:{side}", number), queue=f"pair-{side}")
            submitted[side][number] = started

    latencies = {}
    for side in SIDES:
        stamps = wait_for_stamps(probe, f"pair:{side}", args.jobs, timeout=30)
        latencies[side] = [(stamps[n] - submitted[side][n]) * 1000 for n in sorted(stamps)]
    return latencies


def _report(trees: dict[str, Path], latencies: dict[str, list[float]]) -> None:
    print("| side | checkout | jobs | p50 (ms) | p95 (ms) | p99 (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for side in SIDES:
        values = latencies[side]
        if len(values) < 2:
            print(f"| {side} | {trees[side]} | {len(values)} | - | - | - |")
            continue
        cuts = statistics.quantiles(values, n=100)
        print(
            f"| {side} | {trees[side]} | {len(values)} | {statistics.median(values):.3f} | "
            f"{cuts[94]:.3f} | {cuts[98]:.3f} |"
        )
    if all(len(latencies[side]) >= 2 for side in SIDES):
        shift = statistics.median(latencies["b"]) - statistics.median(latencies["a"])
        print(f"p50 of b minus p50 of a: {shift * 1000:+.0f} us")


if __name__ == "__main__":
    main()
