"""Compare the pickup latency of two bananas source trees, measured side by side in one run.

On the 2-core machine of the reference run, eight runs of the same code gave pickup p50s from
0.50 to 0.98 ms, a spread larger than most changes to the pickup path. Here one worker from
each tree runs on its own queue of one private redis-server, and one producer sends jobs to the
two in turn (A, B, B, A, ...) at random gaps. So both workers run under the same load from the
rest of the machine, and the difference between them comes from their code.

    python -m benchmarks.pickup_pair --a /path/to/main --b . --jobs 800

Each worker runs ``bananas worker`` with the ``bananas_core`` of its tree, in this interpreter's
environment, with the benchmark job and probe of this checkout and with the plugins of the
development environment blocked, as ``benchmarks.run --bananas-env harness`` runs it. The tool
checks in each worker's log which ``bananas_core`` it imported. The producer is this checkout's
``Client``, so the two sides differ only in the worker's code. Each latency runs, as in
``benchmarks.run``, from the time read just before the submit call to the handler's start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

from bananas_core.client import Client
from bananas_core.settings import load_settings
from benchmarks.probe import PROBE_URL_VARIABLE, latency_payload, wait_for_stamps
from benchmarks.run import stop_on_signals
from benchmarks.servers import RedisServer, Service, tail

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("a", "b")
# Plugins of the development environment, which would trace and meter every job.
BLOCKED_PLUGINS = "otel,email,http,data"

# The worker's entry point. It imports the benchmarks package from this checkout first, so that
# the job and the probe are the same on both sides. Then it puts the tree first on sys.path,
# ahead of the working folder that python -c puts there, so that bananas_core comes from the tree.
_WORKER = """
import sys
sys.path.insert(0, {root!r})
import benchmarks
sys.path[0] = {tree!r}
import bananas_core
print("bananas_core from", bananas_core.__file__, flush=True)
from bananas_core.cli import main
main(["worker"])
"""
_IMPORTED = re.compile(r"^bananas_core from (.+)$", re.MULTILINE)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.jobs < 2:
        parser.error(f"invalid --jobs {args.jobs}: expected at least 2 jobs a side")
    if not args.gap > 0:
        parser.error(f"invalid --gap {args.gap}: expected a number of seconds above 0")
    stop_on_signals()
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
        latencies = asyncio.run(_submit(args, trees, queue_server.url, probe_server.url, workers))
    finally:
        # A second Ctrl-C or SIGTERM during the stops below would leave the rest running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
        "REDIS_URL": queue_url,
        "QUEUE": f"pair-{side}",
        "PLUGINS": "benchmarks.queues.bananas_app",
        "PLUGINS_BLOCK": BLOCKED_PLUGINS,
        "WORKER_CONCURRENCY": "10",
        "LOG_LEVEL": "WARNING",
        PROBE_URL_VARIABLE: probe_url,
    }
    env.pop("PYTHONPATH", None)
    argv = [sys.executable, "-c", _WORKER.format(root=str(ROOT), tree=str(tree))]
    log_path = log_dir / f"worker-{side}.log"
    # Service appends to its log, and the import check must read this run's lines only.
    log_path.unlink(missing_ok=True)
    return Service(argv, env, ROOT, log_path)


def _check_tree(side: str, tree: Path, worker: Service) -> None:
    """Raise RuntimeError unless the worker of ``side`` imported the bananas_core of ``tree``."""
    found = _IMPORTED.search(worker.log_path.read_text(errors="replace"))
    if found is None or not Path(found.group(1)).resolve().is_relative_to(tree):
        imported = found.group(1) if found else "nothing"
        raise RuntimeError(f"worker {side} imported bananas_core from {imported}, not from {tree}")
    print(f"worker {side} ran {found.group(1)}")


async def _submit(
    args: argparse.Namespace,
    trees: dict[str, Path],
    queue_url: str,
    probe_url: str,
    workers: list[Service],
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
            _check_tree(side, trees[side], worker)
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
    for side, worker in zip(SIDES, workers):
        stamps = wait_for_stamps(probe, f"pair:{side}", args.jobs, timeout=30)
        if len(stamps) < args.jobs:
            worker.check_running()
            raise RuntimeError(
                f"worker {side} started {len(stamps)} of {args.jobs} jobs within 30 s:\n{tail(worker.log_path)}"
            )
        latencies[side] = [(stamps[n] - submitted[side][n]) * 1000 for n in sorted(stamps)]
    return latencies


def _report(trees: dict[str, Path], latencies: dict[str, list[float]]) -> None:
    print("| side | checkout | jobs | p50 (ms) | p95 (ms) | p99 (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for side in SIDES:
        values = latencies[side]
        cuts = statistics.quantiles(values, n=100)
        print(
            f"| {side} | {trees[side]} | {len(values)} | {statistics.median(values):.3f} | "
            f"{cuts[94]:.3f} | {cuts[98]:.3f} |"
        )
    shift = statistics.median(latencies["b"]) - statistics.median(latencies["a"])
    print(f"p50 of b minus p50 of a: {shift * 1000:+.0f} us")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # Every process it started is stopped by now, so a traceback would only add noise.
        sys.exit(130)
