"""Measure what each command on the way from a submit to a lease costs inside Redis, busy and idle.

The pickup benchmark sends a job every 20 ms or so, and between jobs Redis sleeps. So each
command runs with cold caches and can take several times what the same command takes in a
busy run. This tool reads Redis's own time for every command from ``SLOWLOG`` (threshold 0) on
a private redis-server, in two runs: jobs one at a time with no pause, and jobs ``--gap``
seconds apart. ``EXEC`` is not listed, because Redis logs the commands of a transaction instead.

Each job takes the path of the pickup benchmark: a worker blocks on the wake-up list with its
lease sent behind the wait (``wait_and_lease``), the ``Client`` submits one job, and the
worker records the outcome (``exchange``). For comparison, a queue without a lease moves a
message of the same size with one ``LPUSH`` and a blocked ``BRPOP``, as Huey does.

    python -m benchmarks.script_cost --jobs 400 --gap 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import redis.asyncio as aioredis

from bananas_core.backends.base import RunOutcome
from bananas_core.backends.redis import RedisBackend
from bananas_core.client import Client
from bananas_core.settings import load_settings
from benchmarks.run import stop_on_signals
from benchmarks.servers import RedisServer

WORKER = "script-cost-worker"
LEASE_SECONDS = 60.0
# A script's own commands reach SLOWLOG from Redis's Lua client, which has no address.
SCRIPT_CLIENT = "?:0"


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"invalid --jobs {args.jobs}: expected at least 1 job")
    if not args.gap > 0:
        parser.error(f"invalid --gap {args.gap}: expected a number of seconds above 0")
    stop_on_signals()

    log_dir = Path(tempfile.mkdtemp(prefix="bananas-script-cost-"))
    server = RedisServer("script-cost", log_dir)
    try:
        server.start()
        server.client.config_set("slowlog-max-len", 8 * args.jobs * 20)
        for label, gap in [("one at a time", 0.0), (f"{args.gap * 1000:g} ms apart", args.gap)]:
            queue_rows = asyncio.run(_measure(server, _bananas_job, args.jobs, gap))
            plain_rows = asyncio.run(_measure(server, _plain_job, args.jobs, gap))
            _report(label, args.jobs, queue_rows, plain_rows)
    finally:
        server.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.script_cost",
        description="Print Redis's own time for each command from a submit to a lease, busy and idle.",
    )
    parser.add_argument("--jobs", type=int, default=400, help="jobs in each run (default 400)")
    parser.add_argument(
        "--gap", type=float, default=0.02, help="seconds between jobs in the idle run (default 0.02)"
    )
    return parser


async def _measure(server: RedisServer, run_job, jobs: int, gap: float) -> dict[str, list[int]]:
    """Run ``jobs`` jobs through ``run_job`` and return Redis's times in microseconds, by command."""
    async with _Harness(server.url) as harness:
        await run_job(harness, 0.0)  # loads the scripts and opens the connections
        server.client.config_set("slowlog-log-slower-than", 0)
        server.client.slowlog_reset()
        for _ in range(jobs):
            await run_job(harness, gap)
        entries = server.client.slowlog_get(-1)
        server.client.config_set("slowlog-log-slower-than", 10000)

    rows: dict[str, list[int]] = defaultdict(list)
    for entry in entries:
        words = _text(entry["command"]).split()
        name = words[0].upper()
        if name in ("SLOWLOG", "CONFIG"):
            continue
        if name == "EVALSHA":
            # Only the worker's lease names the worker. Its outcome call leases nothing.
            name = "EVALSHA lease" if WORKER in words else "EVALSHA outcome"
        if _text(entry["client_address"]) == SCRIPT_CLIENT:
            name = f"  {name} (in a script)"
        rows[name].append(entry["duration"])
    return rows


def _text(value: str | bytes) -> str:
    # redis-py returns SLOWLOG's fields as bytes even on a client that decodes responses.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class _Harness:
    """A client, a worker's backend and a plain redis-py connection on one private server."""

    def __init__(self, url: str) -> None:
        self.settings = load_settings(REDIS_URL=url, KEY_PREFIX="script-cost", PLUGINS="", LOG_LEVEL="WARNING")
        self.client = Client(self.settings)
        self.worker = RedisBackend.from_url(url, prefix="script-cost", queue="default")
        self.plain = aioredis.Redis.from_url(url, decode_responses=True)

    async def __aenter__(self) -> _Harness:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.backend.close()
        await self.worker.close()
        await self.plain.aclose()


async def _bananas_job(harness: _Harness, gap: float) -> None:
    lease = asyncio.ensure_future(harness.worker.wait_and_lease(5.0, 10, WORKER, LEASE_SECONDS))
    await asyncio.sleep(gap)
    await harness.client.submit("noop", {"n": 1})
    [job] = await lease
    await harness.worker.exchange([RunOutcome(job, "completed", "")], 0, "", 0)


async def _plain_job(harness: _Harness, gap: float) -> None:
    # A message as large as a bananas record, so that both move the same bytes.
    message = "x" * 400
    popped = asyncio.ensure_future(harness.plain.brpop(["script-cost:plain"], timeout=5))
    await asyncio.sleep(gap)
    await harness.plain.lpush("script-cost:plain", message)
    await popped


def _report(label: str, jobs: int, queue_rows: dict[str, list[int]], plain_rows: dict[str, list[int]]) -> None:
    print(f"\nJobs {label} ({jobs} jobs). Redis's time per call in microseconds:")
    print(f"{'command':44s} {'calls/job':>9s} {'median':>7s} {'p90':>7s}")
    for title, rows in [("bananas", queue_rows), ("LPUSH and BRPOP, no lease", plain_rows)]:
        print(title)
        for name in sorted(rows, key=lambda name: (name.startswith(" "), name)):
            durations = sorted(rows[name])
            p90 = durations[int(len(durations) * 0.9)]
            print(f"  {name:42s} {len(durations) / jobs:9.2f} {statistics.median(durations):7.1f} {p90:7d}")
        top_level = [name for name in rows if not name.startswith(" ") and name != "EVALSHA outcome"]
        path = sum(statistics.median(rows[name]) * len(rows[name]) / jobs for name in top_level)
        print(f"  {'from the submit to the lease, per job':42s} {'':9s} {path:7.1f}")


if __name__ == "__main__":
    main()
