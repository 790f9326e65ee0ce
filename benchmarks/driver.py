"""The client side of every workload, run inside one queue's virtual environment.

    python -m benchmarks.driver MODULE COMMAND [options]

MODULE is a queue module such as ``benchmarks.queues.arq_app`` with a ``Producer`` class.
The harness runs one driver process per measurement and reads the last stdout line, which
starts with ``BENCH_RESULT`` and carries a JSON object. The queue's Redis URL comes from
``BENCH_REDIS_URL`` (bananas: ``REDIS_URL``) and the probe server's from ``BENCH_PROBE_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import json
import os
import platform
import random
import time
from typing import Any

import redis

from benchmarks.probe import PROBE_URL_VARIABLE, drain_payload, latency_payload, wait_for_stamps

RESULT_PREFIX = "BENCH_RESULT "


def _emit(result: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _describe(module_name: str, distributions: list[str]) -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    module = importlib.import_module(module_name)
    return {"versions": versions, "bulk_api": module.Producer.bulk_api}


async def _enqueue(producer: Any, args: argparse.Namespace) -> dict[str, Any]:
    # Payloads are built before the clock starts, so both modes time only the queue's calls.
    payloads = [drain_payload(args.key, args.total or args.count) for _ in range(args.count)]
    if args.mode == "bulk" and producer.bulk_api is None:
        raise SystemExit(f"{args.module} has no bulk enqueue API; use --mode single")

    started = time.perf_counter()
    if args.mode == "bulk":
        await producer.submit_many(payloads)
    else:
        for payload in payloads:
            await producer.submit(payload)
    seconds = time.perf_counter() - started
    return {"count": args.count, "seconds": seconds, "bulk_api": producer.bulk_api}


async def _latency(producer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Submit jobs at random times to an idle worker and pair each with its handler's start time.

    Arrivals form a Poisson process (exponential gaps of mean ``gap`` seconds), independent
    of the worker's own cycle. A closed loop (submit when the previous job started) would
    lock onto the poll interval of a polling worker and always wait a full interval. The
    submit time is read just before the queue's submit call, so every latency includes the
    producer's own enqueue cost, the same way for every queue.
    """
    probe = redis.Redis.from_url(os.environ[PROBE_URL_VARIABLE])
    gaps = random.Random(args.seed)
    submitted: dict[int, float] = {}
    origin = time.monotonic()
    due = 0.0
    for index in range(args.count):
        due += gaps.expovariate(1 / args.gap)
        if due > args.limit:
            break
        pause = origin + due - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        submitted[index] = time.time()
        await producer.submit(latency_payload(args.key, index))

    stamps = wait_for_stamps(probe, args.key, len(submitted), args.timeout)
    probe.close()
    latencies = [stamps[index] - submitted[index] for index in sorted(stamps) if index in submitted]
    return {
        "submitted": len(submitted),
        "latencies": latencies,
        "missing": len(submitted) - len(latencies),
    }


async def _warmup(producer: Any, args: argparse.Namespace) -> dict[str, Any]:
    # One job run end to end proves the worker is connected and has imported the handler.
    probe = redis.Redis.from_url(os.environ[PROBE_URL_VARIABLE])
    started = time.monotonic()
    await producer.submit(latency_payload(args.key, 0))
    stamps = wait_for_stamps(probe, args.key, 1, args.timeout)
    probe.close()
    return {"ready": bool(stamps), "seconds": time.monotonic() - started}


COMMANDS = {"enqueue": _enqueue, "latency": _latency, "warmup": _warmup}


async def _ping(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``count`` PINGs awaited one by one, then ``count`` PINGs in pipelines of 100.

    The baseline for one enqueue per call: one round trip of redis-py's asyncio client (with
    the parser this environment installs) and nothing around it.
    """
    import redis.asyncio

    url = os.environ.get("BENCH_REDIS_URL") or os.environ["REDIS_URL"]
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.ping()  # connects outside the timed loops
        started = time.perf_counter()
        for _ in range(args.count):
            await client.ping()
        awaited = time.perf_counter() - started

        started = time.perf_counter()
        for _ in range(args.count // 100):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(100):
                    pipe.ping()
                await pipe.execute()
        pipelined = time.perf_counter() - started
    finally:
        await client.aclose()
    return {
        "count": args.count,
        "awaited_rate": args.count / awaited,
        "pipelined_rate": (args.count // 100) * 100 / pipelined,
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    module = importlib.import_module(args.module)
    producer = module.Producer()
    await producer.open()
    try:
        return await COMMANDS[args.command](producer, args)
    finally:
        await producer.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.driver", description=__doc__)
    parser.add_argument("module", help="queue module with a Producer class")
    commands = parser.add_subparsers(dest="command", required=True)

    describe = commands.add_parser(
        "describe", help="print the bulk API and the versions of Python and these distributions"
    )
    describe.add_argument("distributions", nargs="*")

    enqueue = commands.add_parser("enqueue", help="submit drain jobs and time the submission")
    enqueue.add_argument("--count", type=int, required=True, help="jobs to submit")
    enqueue.add_argument("--mode", choices=["single", "bulk"], default="single")
    enqueue.add_argument("--key", required=True, help="probe key the jobs report under")
    enqueue.add_argument(
        "--total", type=int, default=0, help="jobs the drain waits for (default: --count)"
    )

    latency = commands.add_parser(
        "latency", help="measure submit-to-start latency on an idle worker"
    )
    latency.add_argument("--count", type=int, required=True, help="jobs to submit")
    latency.add_argument("--gap", type=float, default=0.02, help="mean seconds between submissions")
    latency.add_argument(
        "--limit", type=float, default=20.0, help="seconds after which no more jobs are submitted"
    )
    latency.add_argument("--seed", type=int, default=1, help="seed of the random pauses")
    latency.add_argument("--key", required=True, help="probe key the jobs report under")
    latency.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the last start"
    )

    ping = commands.add_parser("ping", help="time bare redis-py round trips, the enqueue baseline")
    ping.add_argument("--count", type=int, required=True, help="PINGs per mode")

    warmup = commands.add_parser("warmup", help="run one job end to end")
    warmup.add_argument("--key", required=True, help="probe key the job reports under")
    warmup.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "describe":
        _emit(_describe(args.module, args.distributions))
        return
    if args.command == "ping":
        _emit(asyncio.run(_ping(args)))
        return
    _emit(asyncio.run(_run(args)))


if __name__ == "__main__":
    main()
