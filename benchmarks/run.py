"""Run the benchmark workloads against bananas and its peers, and print the tables.

    python -m benchmarks.run [--quick] [--queues bananas,arq,...] [--workloads ...]

Run it with the project's interpreter (``make bench`` does). It starts two private
redis-servers on free loopback ports: the queues' server, and a probe server that the jobs
report to. It creates each queue's virtual environment under benchmarks/.venvs/ on first use
(bananas included) and runs every workload. It prints Markdown tables, and writes the figures as JSON and every
process's log under benchmarks/results/. It stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.environments import BENCH_DIR, DEFAULT_VENVS_DIR, ensure_environment
from benchmarks.machine_load import ForeignLoad
from benchmarks.queues.specs import SPECS, QueueSpec, in_harness_environment
from benchmarks.servers import RedisServer
from benchmarks.workloads import Bench, Options, command_breakdown, log

WORKLOADS = ("latency", "drain", "bulk", "multi", "http")
LOAD_WARNING = 0.5  # 1-minute load average above which the figures are probably disturbed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--queues",
        default=",".join(SPECS),
        help=f"comma-separated queues to run (default: all of {', '.join(SPECS)})",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads (default: all of {', '.join(WORKLOADS)})",
    )

    parser.add_argument(
        "--quick",
        action="store_true",
        help="small counts: 1,000 jobs, 100 latency jobs, 3 s of HTTP load",
    )
    parser.add_argument("--jobs", type=int, help="jobs per enqueue and drain run (default 10000)")
    parser.add_argument("--latency-jobs", type=int, help="jobs per latency run (default 500)")
    parser.add_argument(
        "--latency-gap",
        type=float,
        default=0.02,
        help="mean seconds between latency submissions, drawn at random (default 0.02)",
    )
    parser.add_argument(
        "--latency-limit",
        type=float,
        default=20.0,
        help="seconds after which a latency run submits no more jobs (default 20)",
    )

    parser.add_argument("--reps", type=int, default=3, help="runs of each workload (default 3)")
    parser.add_argument(
        "--drain-limit",
        type=float,
        default=45.0,
        help="seconds after which a drain is cut short and rated on the jobs "
        "run so far (default 45)",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="bananas worker processes in the multi workload (default: one per core)",
    )

    parser.add_argument(
        "--http-seconds", type=float, help="seconds of load per HTTP run (default 10)"
    )
    parser.add_argument(
        "--http-connections", type=int, default=10, help="concurrent HTTP connections (default 10)"
    )
    parser.add_argument(
        "--bananas-env",
        choices=["own", "harness"],
        default="own",
        help="run bananas in its own environment under --venvs-dir, with no plugin installed "
        "(own, the default), or in the harness's environment with its plugins blocked (harness)",
    )
    parser.add_argument(
        "--http-tool",
        choices=["auto", "wrk", "httpx"],
        default="auto",
        help="load generator: wrk if installed (auto), or the httpx loop",
    )
    parser.add_argument(
        "--http-max-requests",
        type=int,
        default=100_000,
        help="request limit of the httpx loop per run (default 100000)",
    )

    parser.add_argument(
        "--venvs-dir",
        type=Path,
        default=DEFAULT_VENVS_DIR,
        help="where the queues' virtual environments live (default benchmarks/.venvs)",
    )
    parser.add_argument(
        "--python",
        default="python3",
        help="interpreter that creates the queues' environments (default python3)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="directory for the JSON, the tables and the logs "
        "(default benchmarks/results/TIMESTAMP)",
    )
    return parser


def _options(args: argparse.Namespace, log_dir: Path) -> Options:
    quick = args.quick
    return Options(
        jobs=args.jobs or (1_000 if quick else 10_000),
        latency_jobs=args.latency_jobs or (100 if quick else 500),
        latency_gap=args.latency_gap,
        latency_limit=args.latency_limit,
        reps=args.reps,
        drain_limit=args.drain_limit,
        worker_processes=args.worker_processes,
        http_seconds=args.http_seconds or (3.0 if quick else 10.0),
        http_connections=args.http_connections,
        http_tool=args.http_tool,
        http_max_requests=args.http_max_requests,
        venvs_dir=args.venvs_dir,
        log_dir=log_dir,
    )


def _split(value: str, allowed: tuple[str, ...] | list[str], kind: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise SystemExit(f"unknown {kind} {', '.join(unknown)}: choose from {', '.join(allowed)}")
    return names


def machine_info() -> dict[str, Any]:
    """Describe this machine from /proc (Linux): CPU model, cores, RAM, kernel."""
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with open("/proc/meminfo") as file:
        for line in file:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    return {
        "cpu_model": cpu_model,
        "nproc": os.cpu_count(),
        "ram_gib": ram_kib / 1024 / 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _guarded(queue: dict[str, Any], name: str, workload: str, action: Any) -> Any:
    # One queue's failure is recorded and reported; the other queues still run.
    try:
        return action()
    except Exception as error:  # noqa: BLE001 - any failure of a peer must not stop the run
        message = f"{workload} failed: {type(error).__name__}: {error}"
        log(f"{name}: {message}")
        traceback.print_exc(file=sys.stderr)
        queue.setdefault("errors", []).append(message.splitlines()[0])
        return None


def _prepare(
    spec: QueueSpec, bench: Bench, args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    ensure_environment(spec, args.venvs_dir, args.python, log_dir)
    described = bench.driver("describe", *spec.distributions, timeout=120)
    return {
        "versions": described["versions"],
        "bulk_api": described["bulk_api"],
        "settings": spec.settings,
        "worker_command": " ".join(spec.worker),
    }


def run_all(args: argparse.Namespace, options: Options, log_dir: Path) -> dict[str, Any]:
    """Run the chosen workloads on the chosen queues and return the results."""
    names = _split(args.queues, list(SPECS), "queue")
    workloads = _split(args.workloads, WORKLOADS, "workload")
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "load_before": list(os.getloadavg()),
        "options": {
            key: value for key, value in vars(options).items() if not isinstance(value, Path)
        },
        "workloads": workloads,
        "queues": {name: {} for name in names},
    }
    if results["load_before"][0] > LOAD_WARNING:
        log(
            f"warning: load average {results['load_before'][0]:.2f} before the run; figures may be disturbed"
        )

    queue_server = RedisServer("queue", log_dir)
    probe_server = RedisServer("probe", log_dir)
    try:
        queue_server.start()
        probe_server.start()
        results["redis_version"] = queue_server.version()
        log(f"queue server {queue_server.url}, probe server {probe_server.url}")
        benches: dict[str, Bench] = {}
        for name in names:
            spec = SPECS[name]
            if args.bananas_env == "harness" and spec.install_project:
                spec = in_harness_environment(spec)
            bench = Bench(spec, options, queue_server, probe_server)
            prepare = partial(_prepare, spec, bench, args, log_dir)
            prepared = _guarded(results["queues"][name], name, "set-up", prepare)
            if prepared is not None:
                results["queues"][name].update(prepared)
                benches[name] = bench
        foreign = ForeignLoad()
        foreign.start()
        try:
            _run_workloads(benches, workloads, options, results["queues"])
        finally:
            foreign.stop()
        results["foreign_load"] = foreign.summary()
    finally:
        queue_server.stop()
        probe_server.stop()
    results["load_after"] = list(os.getloadavg())
    results["wall_seconds"] = time.monotonic() - started
    return results


def _run_workloads(
    benches: dict[str, Bench],
    workloads: list[str],
    options: Options,
    queues: dict[str, dict[str, Any]],
) -> None:
    # Latency runs alternate between queues like the others: when each queue ran all its
    # latency runs in one block, the machine's drift during the run favoured the first queues.
    if "latency" in workloads:
        for rep in range(options.reps):
            for name, bench in benches.items():
                log(f"{name}: latency of {options.latency_jobs} jobs, run {rep + 1} of {options.reps}")
                measured = _guarded(queues[name], name, "latency", partial(bench.latency, rep))
                if measured is None:
                    continue
                latency = queues[name].setdefault("latency", {"runs": []})
                latency["runs"].append(measured.pop("run"))
                # The idle memory of the first run's worker, before any latency job.
                for key, value in measured.items():
                    latency.setdefault(key, value)

    # Runs of different queues alternate, so a change of machine load spreads over all queues.
    for rep in range(options.reps):
        for name, bench in benches.items():
            if "drain" in workloads and name == "bananas":
                # The baseline of a single enqueue, measured next to it.
                log(f"bare redis-py round trips, run {rep + 1} of {options.reps}")
                baseline = _guarded(queues[name], name, "round trips", bench.round_trips)
                if baseline is not None:
                    queues[name].setdefault("round_trips", []).append(baseline)
            if "drain" in workloads:
                log(
                    f"{name}: enqueue and drain {options.jobs} jobs, run {rep + 1} of {options.reps}"
                )
                drain = _guarded(queues[name], name, "drain", partial(bench.enqueue_and_drain, rep))
                if drain is not None:
                    commands = drain.pop("commands")
                    queues[name].setdefault("drain", []).append(drain)
                    queues[name].setdefault("commands", []).append(
                        command_breakdown(commands, drain["runs"], bench.spec)
                    )
            if "bulk" in workloads and queues[name].get("bulk_api"):
                log(f"{name}: bulk enqueue of {options.jobs} jobs, run {rep + 1} of {options.reps}")
                bulk = _guarded(queues[name], name, "bulk", bench.bulk_enqueue)
                if bulk is not None:
                    queues[name].setdefault("bulk", []).append(bulk)

    # Workloads of bananas alone: the peers have no HTTP API and no multi-process mode of
    # their own worker command that shares nothing but Redis.
    bananas = benches.get("bananas")
    if bananas is None:
        return
    if "multi" in workloads:
        for rep in range(options.reps):
            log(
                f"bananas: drain with {options.worker_processes} worker processes, run {rep + 1} of {options.reps}"
            )
            drain_several = partial(
                bananas.enqueue_and_drain, rep, processes=options.worker_processes
            )
            multi = _guarded(queues["bananas"], "bananas", "multi", drain_several)
            if multi is not None:
                multi.pop("commands")
                queues["bananas"].setdefault("drain_multi", []).append(multi)
    if "http" in workloads:
        log(f"bananas: HTTP, {options.reps} runs of {options.http_seconds:g}s")
        http = _guarded(queues["bananas"], "bananas", "http", bananas.http)
        if http is not None:
            queues["bananas"]["http"] = http


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGINT into exceptions, so every started process is stopped on the way out.

    SIGINT is set explicitly because a shell starts background commands with SIGINT ignored.
    """

    def exit_on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop_on_signals()
    output = args.output or BENCH_DIR / "results" / time.strftime("%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=True)
    options = _options(args, output)

    results = run_all(args, options, output)
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    tables = report.render(results)
    (output / "tables.md").write_text(tables)
    print(tables)
    log(f"results, tables and logs in {output}")
    failed = any(queue.get("errors") for queue in results["queues"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
