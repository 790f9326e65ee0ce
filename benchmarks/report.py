"""Markdown tables of one run's results, as ``benchmarks.run`` prints them."""

from __future__ import annotations

from typing import Any

from benchmarks.stats import Summary, summarize

MIB = 1024 * 1024


def _cell(summary: Summary | None, digits: int = 0) -> str:
    """Format ``median (min–max)``; one run shows its value alone."""
    if summary is None:
        return "n/a"
    if summary.count == 1:
        return f"{summary.median:,.{digits}f}"
    return f"{summary.median:,.{digits}f} ({summary.low:,.{digits}f}–{summary.high:,.{digits}f})"


def _values(runs: list[dict[str, Any]], field: str, scale: float = 1.0) -> list[float]:
    return [run[field] / scale for run in runs if run.get(field) is not None]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """Return every table of ``results`` (the JSON that ``benchmarks.run`` writes)."""
    queues: dict[str, dict[str, Any]] = results["queues"]
    options = results["options"]
    sections = [
        _machine(results),
        _versions(queues),
        _throughput(queues, options),
        _round_trips(queues),
        _latency(queues, options),
        _memory(queues),
        _commands(queues),
        _multi(queues),
        _http(queues),
        _bananas_commands(queues),
        _errors(queues),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _machine(results: dict[str, Any]) -> str:
    machine = results["machine"]
    options = results["options"]
    return "\n".join(
        [
            "## Machine and run",
            "",
            (
                f"- CPU: {machine['cpu_model']}, {machine['nproc']} cores (nproc); RAM {machine['ram_gib']:.1f} GiB; "
                f"Linux {machine['kernel']}; Python {machine['python']}; redis-server {results['redis_version']}"
            ),
            f"- load average (1, 5, 15 min) before: {_load(results['load_before'])}, after: {_load(results['load_after'])}",
            (
                f"- {options['reps']} runs of each workload; {options['jobs']:,} jobs per enqueue and drain run; "
                f"up to {options['latency_jobs']} latency jobs per run, submitted at random (Poisson) "
                f"times {options['latency_gap'] * 1000:g} ms apart on average, for at most "
                f"{options['latency_limit']:g} s"
            ),
            _foreign(results.get("foreign_load")),
            f"- wall time of the whole run: {results['wall_seconds'] / 60:.1f} min",
        ]
    )


def _foreign(foreign: dict[str, float] | None) -> str:
    if not foreign or not foreign["samples"]:
        return "- CPU used by other processes during the workloads: not sampled"
    return (
        f"- CPU used by other processes during the workloads: mean {foreign['mean_cores']:.2f} "
        f"cores, max {foreign['max_cores']:.2f} cores ({foreign['samples']} samples of 5 s)"
    )


def _load(load: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in load)


def _versions(queues: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, queue in queues.items():
        versions = ", ".join(
            f"{package} {version}" for package, version in queue.get("versions", {}).items()
        )
        rows.append(
            [name, versions, f"`{queue.get('worker_command', '')}`", queue.get("settings", "")]
        )
    return "## Versions and worker settings\n\n" + _table(
        ["queue", "versions", "worker command", "settings"], rows
    )


def _throughput(queues: dict[str, dict[str, Any]], options: dict[str, Any]) -> str:
    rows = []
    for name, queue in queues.items():
        drains = queue.get("drain", [])
        bulk = queue.get("bulk", [])
        bulk_cell = _cell(summarize(_values(bulk, "rate")))
        if queue.get("bulk_api"):
            bulk_cell += f" `{queue['bulk_api']}`"
        else:
            bulk_cell = "no bulk API"
        drain_cell = _cell(summarize(_values(drains, "drain_rate")))
        cut_short = [drain["runs"] for drain in drains if drain["runs"] < drain["jobs"]]
        if cut_short:
            drain_cell += (
                f" cut short at {options['drain_limit']:g} s in {len(cut_short)} of {len(drains)} runs, "
                f"after {min(cut_short):,}–{max(cut_short):,} jobs"
            )
        rows.append(
            [
                name,
                _cell(summarize(_values(drains, "enqueue_rate"))),
                bulk_cell,
                drain_cell,
                _cell(summarize(_values(drains, "drain_rate_all"))),
                _cell(summarize(_values(drains, "startup_seconds")), 1),
            ]
        )
    header = [
        "queue",
        "enqueue one at a time (jobs/s)",
        "enqueue bulk (jobs/s)",
        "drain, 1 worker process (jobs/s, after the first 10 % of jobs)",
        "same, from the first job (jobs/s)",
        "worker start to first job (s)",
    ]
    return (
        f"## Throughput: median (min–max) of {options['reps']} runs, {options['jobs']:,} jobs each\n\n"
        + _table(header, rows)
    )


def _latency(queues: dict[str, dict[str, Any]], options: dict[str, Any]) -> str:
    rows = []
    for name, queue in queues.items():
        runs = queue.get("latency", {}).get("runs", [])
        missing = sum(run.get("missing", 0) for run in runs)
        rows.append(
            [
                name,
                _cell(summarize(_values(runs, "p50_ms")), 1),
                _cell(summarize(_values(runs, "p95_ms")), 1),
                _cell(summarize(_values(runs, "p99_ms")), 1),
                _cell(summarize(_values(runs, "samples"))),
                str(missing),
            ]
        )
    header = [
        "queue",
        "p50 (ms)",
        "p95 (ms)",
        "p99 (ms)",
        "jobs measured per run",
        "jobs not started within 60 s",
    ]
    return (
        "## Pickup latency, submit call to handler start, idle worker: median (min–max) over "
        f"{options['reps']} runs\n\n" + _table(header, rows)
    )


def _memory(queues: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, queue in queues.items():
        latency = queue.get("latency", {})
        drains = queue.get("drain", [])
        idle = (
            f"{latency['idle_rss'] / MIB:.1f} / {latency['idle_pss'] / MIB:.1f}"
            if latency
            else "n/a"
        )
        processes = str(latency.get("idle_processes", "n/a"))
        rows.append(
            [
                name,
                processes,
                idle,
                _cell(summarize(_values(drains, "worker_rss", MIB)), 1),
                _cell(summarize(_values(drains, "worker_pss", MIB)), 1),
                _cell(summarize(_values(drains, "queued_bytes_per_job"))),
                _cell(summarize(_values(drains, "retained_bytes_per_job"))),
            ]
        )
    header = [
        "queue",
        "worker processes",
        "worker RSS / PSS idle (MiB)",
        "worker RSS after drain (MiB)",
        "worker PSS after drain (MiB)",
        "Redis bytes per queued job",
        "Redis bytes per job kept after drain",
    ]
    return "## Memory\n\n" + _table(header, rows)


def _commands(queues: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, queue in queues.items():
        breakdowns = queue.get("commands", [])
        if not breakdowns:
            continue
        top = breakdowns[0]["per_command"]
        common = ", ".join(f"{command} {calls:.2f}" for command, calls in list(top.items())[:5])
        drains = queue.get("drain", [])
        rows.append(
            [
                name,
                _cell(summarize(_values(drains, "enqueue_redis_cpu_us"))),
                _cell(summarize(_values(drains, "drain_redis_cpu_us"))),
                _cell(summarize([b["commands_per_job"] for b in breakdowns]), 2),
                _cell(summarize([b["script_calls_per_job"] for b in breakdowns]), 2),
                common,
            ]
        )
    header = [
        "queue",
        "Redis CPU per enqueue (µs)",
        "Redis CPU per job in the drain (µs)",
        "commands per job in the drain",
        "script calls per job",
        "most called in the drain (first run, per job)",
    ]
    return (
        "## Redis work per job: CPU time (INFO cpu) and commands during a 1-process drain "
        "(INFO commandstats, where commands run inside Lua scripts count too)\n\n"
        + _table(header, rows)
    )


def _multi(queues: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, queue in queues.items():
        drains = queue.get("drain_multi", [])
        if not drains:
            continue
        single = summarize(_values(queue.get("drain", []), "drain_rate"))
        multi = summarize(_values(drains, "drain_rate"))
        speedup = f"{multi.median / single.median:.2f}x" if single and multi else "n/a"
        rows.append(
            [
                name,
                str(drains[0]["processes"]),
                _cell(multi),
                speedup,
                _cell(summarize(_values(drains, "drain_rate_all"))),
                _cell(summarize(_values(queue.get("drain", []), "drain_redis_cpu_share")), 2),
                _cell(summarize(_values(drains, "drain_redis_cpu_share")), 2),
                _cell(summarize(_values(drains, "worker_pss", MIB)), 1),
            ]
        )
    if not rows:
        return ""
    header = [
        "queue",
        "worker processes",
        "drain (jobs/s, after the first 10 % of jobs)",
        "vs 1 process",
        "same, from the first job (jobs/s)",
        "Redis CPU (cores), 1 process",
        f"Redis CPU (cores), {rows[0][1]} processes",
        "workers' PSS after (MiB)",
    ]
    return (
        "## Drain with `bananas worker --processes N`, one process per core\n\n"
        + _table(header, rows)
    )


def _http(queues: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, queue in queues.items():
        by_endpoint: dict[str, list[dict[str, Any]]] = {}
        for run in queue.get("http", []):
            # Runs from before the batch endpoint was measured name no endpoint.
            by_endpoint.setdefault(run.get("endpoint", "POST /jobs"), []).append(run)
        for endpoint, runs in by_endpoint.items():
            jobs_per_request = runs[0].get("jobs_per_request", 1)
            rows.append(
                [
                    name,
                    endpoint,
                    runs[0]["tool"],
                    _cell(summarize(_values(runs, "rate"))),
                    _cell(summarize([run["rate"] * jobs_per_request for run in runs])),
                    _cell(summarize(_values(runs, "p50_ms")), 1),
                    _cell(summarize(_values(runs, "p95_ms")), 1),
                    _cell(summarize(_values(runs, "p99_ms")), 1),
                    str(sum(run["errors"] for run in runs)),
                    str(sum(run["stored"] for run in runs)),
                ]
            )
    if not rows:
        return ""
    header = [
        "queue",
        "request",
        "load generator",
        "requests/s",
        "jobs/s",
        "p50 (ms)",
        "p95 (ms)",
        "p99 (ms)",
        "errors",
        "jobs stored",
    ]
    return "## HTTP: job submission on one `bananas api` process\n\n" + _table(header, rows)


def _round_trips(queues: dict[str, dict[str, Any]]) -> str:
    bananas = queues.get("bananas", {})
    baselines = bananas.get("round_trips", [])
    if not baselines:
        return ""
    awaited = summarize(_values(baselines, "awaited_rate"))
    pipelined = summarize(_values(baselines, "pipelined_rate"))
    single = summarize(_values(bananas.get("drain", []), "enqueue_rate"))
    ratio = f"{single.median / awaited.median:.2f}" if single and awaited else "n/a"
    header = [
        "awaited PINGs (per s)",
        "pipelined PINGs, 100 per pipeline (per s)",
        "bananas single enqueue (jobs/s)",
        "single enqueue / awaited PING",
    ]
    rows = [[_cell(awaited), _cell(pipelined), _cell(single), ratio]]
    return (
        "## Bare redis-py round trips from one process, in the bananas environment\n\n"
        + _table(header, rows)
    )


def _bananas_commands(queues: dict[str, dict[str, Any]]) -> str:
    breakdowns = queues.get("bananas", {}).get("commands", [])
    if not breakdowns:
        return ""
    first = breakdowns[0]
    rows = [[command, f"{calls:.3f}"] for command, calls in first["per_command"].items()]
    round_trips = summarize([b["round_trips_per_job"] for b in breakdowns])
    return (
        "## bananas: Redis calls per job during a 1-process drain (first run)\n\n"
        + _table(["command", "calls per job"], rows)
        + f"\n\nRound trips per job from the worker (commands less those inside Lua scripts): "
        f"{_cell(round_trips, 2)}"
    )


def _errors(queues: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"- {name}: {error}" for name, queue in queues.items() for error in queue.get("errors", [])
    ]
    return "## Errors\n\n" + "\n".join(lines) if lines else ""
