"""The ``bananas`` command: services (api, worker, scheduler, dev) and job commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from functools import partial
from typing import Any, NoReturn

if sys.version_info < (3, 11):  # pragma: no cover - the builtin arrived in 3.11
    from exceptiongroup import BaseExceptionGroup

import anyio

from bananas_core import __version__
from bananas_core.backends import create_backend
from bananas_core.errors import (
    BackendError,
    BananasError,
    ConfigError,
    JobConflict,
    JobNotFound,
    PluginError,
    ScheduleNotFound,
)
from bananas_core.durations import DURATION_HELP, parse_duration
from bananas_core.job import JobStatus
from bananas_core.plugins import Plugins, add_plugin_commands, load_configured_plugins, log_plugins, origin
from bananas_core.settings import Settings, load_settings, redact_url

logger = logging.getLogger("bananas.cli")

EXIT_FAILURE = 1  # the service could not start, for example its port is taken
EXIT_USAGE = 2  # invalid arguments or settings, as argparse uses
EXIT_PLUGIN = 3  # a plugin failed to load or conflicts with another
EXIT_NOT_FOUND = 4  # no job has the requested id
EXIT_BACKEND = 5  # the backend (Redis) is unreachable
EXIT_CONFLICT = 6  # the job's state does not allow the operation, such as cancelling a finished job

# Commands that print a result and exit. Unless LOG_LEVEL is set, they log warnings and errors
# only, so that the lines about their steps do not bury the result.
ONE_SHOT_COMMANDS = frozenset(
    {"enqueue", "status", "plugins", "list", "queues", "workers", "cancel", "wait", "dead", "schedules"}
)


def main(argv: list[str] | None = None) -> None:
    """Run the command line and exit with its status."""
    parser = _parser()
    # Plugins may add commands, so they load before the arguments are parsed. If they cannot
    # load, the built-in commands still parse, and the error is reported after parsing.
    load_error: BananasError | None = None
    try:
        add_plugin_commands(load_configured_plugins(load_settings()).manager, parser.commands)
    except (ConfigError, PluginError) as error:
        load_error = error
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(EXIT_USAGE)

    overrides: dict[str, Any] = {}
    if args.command == "dev" and "REDIS_URL" not in os.environ:
        # The embedded backend lets the whole system run on a machine without Redis.
        overrides["REDIS_URL"] = "memory://dev"
    for option, setting in (("concurrency", "WORKER_CONCURRENCY"), ("host", "API_HOST"), ("port", "API_PORT")):
        if getattr(args, option, None) is not None:
            overrides[setting] = getattr(args, option)

    try:
        settings = load_settings(**overrides)
    except ConfigError as error:
        print(f"bananas: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    quiet = args.command in ONE_SHOT_COMMANDS and "LOG_LEVEL" not in os.environ
    _configure_logging("WARNING" if quiet else settings.LOG_LEVEL)
    try:
        if load_error is not None:
            raise load_error
        sys.exit(args.handler(settings, args) or 0)
    except (BananasError, OSError) as error:
        _exit_for(error)
    except BaseExceptionGroup as group:
        # A task group wraps the error of a failed service, such as a plugin's start-up hook.
        for error in _leaves(group):
            if isinstance(error, (BananasError, OSError)):
                _exit_for(error)
        raise


def _exit_for(error: BaseException) -> NoReturn:
    """Print one line for ``error`` and exit with the status of its kind."""
    for kind, status, label in _ERROR_EXITS:
        if isinstance(error, kind):
            print(f"bananas: {label}{error}", file=sys.stderr)
            sys.exit(status)
    raise error


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return leaves


# The first matching class decides, so subclasses come before BananasError. A BananasError of
# no other kind comes from the client's checks of names, queues and options: a usage error.
# OSError is, for example, the API port being taken.
_ERROR_EXITS: tuple[tuple[type[BaseException], int, str], ...] = (
    (PluginError, EXIT_PLUGIN, "plugin error: "),
    (ConfigError, EXIT_USAGE, ""),
    (JobNotFound, EXIT_NOT_FOUND, ""),
    (ScheduleNotFound, EXIT_NOT_FOUND, ""),
    (BackendError, EXIT_BACKEND, ""),
    (JobConflict, EXIT_CONFLICT, ""),
    (BananasError, EXIT_USAGE, ""),
    (OSError, EXIT_FAILURE, ""),
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as the other errors of bananas are."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"bananas: {message}; see '{self.prog} --help'\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bananas",
        description="A Redis job queue. Settings come from environment variables (see the README).",
    )
    parser.add_argument("--version", action="version", version=f"bananas {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    api = commands.add_parser("api", help="serve the HTTP API on API_HOST:API_PORT")
    api.add_argument("--host", help="address to bind (overrides API_HOST)")
    api.add_argument("--port", type=int, help="port to bind (overrides API_PORT)")
    api.set_defaults(handler=_run_api)

    worker = commands.add_parser("worker", help="run jobs from the queues")
    worker.add_argument("--concurrency", type=int, help="jobs at once (overrides WORKER_CONCURRENCY)")
    worker.add_argument(
        "--processes", type=int, default=1,
        help="worker processes to run under one supervisor, for example one per core (default 1)",
    )
    worker.set_defaults(handler=_run_worker)

    scheduler = commands.add_parser("scheduler", help="move due and expired jobs back to the queues")
    scheduler.set_defaults(handler=_run_scheduler)

    dev = commands.add_parser(
        "dev", help="run API, worker and scheduler in one process (memory:// unless REDIS_URL is set)"
    )
    dev.add_argument("--host", help="address to bind (overrides API_HOST)")
    dev.add_argument("--port", type=int, help="port to bind (overrides API_PORT)")
    dev.add_argument("--concurrency", type=int, help="jobs at once (overrides WORKER_CONCURRENCY)")
    dev.set_defaults(handler=_run_dev)

    enqueue = commands.add_parser("enqueue", help="submit a job")
    enqueue.add_argument("name", help="handler name, as listed by 'bananas plugins'")
    enqueue.add_argument("--payload", default="{}", help="payload as a JSON object (default {})")
    enqueue.add_argument("--priority", default="normal", choices=["high", "normal", "low"])
    enqueue.add_argument(
        "--delay", type=_parse_duration, default=0.0, help=f"time before the job is due: {DURATION_HELP}"
    )
    enqueue.add_argument("--queue", help="named queue (default: the QUEUE setting)")
    enqueue.add_argument("--run-at", type=_parse_time, help="ISO 8601 time the job is due, instead of --delay")
    enqueue.add_argument("--max-retries", type=int, help="retries after failed runs (default MAX_RETRIES)")
    enqueue.add_argument(
        "--timeout", type=_parse_duration, help=f"time one run may take (default JOB_TIMEOUT): {DURATION_HELP}"
    )
    enqueue.add_argument(
        "--unique-key", help="idempotency key: a repeat within IDEMPOTENCY_WINDOW returns the first job"
    )
    enqueue.add_argument("--json", action="store_true", help="print the whole job as JSON")
    enqueue.set_defaults(handler=_enqueue)

    status = commands.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print the whole job as JSON")
    status.set_defaults(handler=_status)

    plugins = commands.add_parser("plugins", help="list installed plugins and their handlers")
    plugins.add_argument("--json", action="store_true", help="print as JSON")
    plugins.set_defaults(handler=_plugins)
    _add_job_commands(commands)
    parser.commands = commands  # type: ignore[attr-defined]  # for add_plugin_commands
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _start(settings: Settings) -> Plugins:
    plugins = load_configured_plugins(settings)
    log_plugins(plugins)
    return plugins


def _run_worker(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_core.worker import Worker

    if args.processes < 1:
        raise ConfigError(f"invalid --processes {args.processes}: expected 1 or more")
    if args.processes > 1:
        from bananas_core.supervisor import supervise

        # Each child reads the same environment; --concurrency is passed on as given.
        extra = [] if args.concurrency is None else ["--concurrency", str(args.concurrency)]
        return supervise(args.processes, extra)

    from bananas_core.collector import tune_for_jobs

    plugins = _start(settings)
    backend = create_backend(plugins.manager, settings)
    # Tuned once the worker has connected and registered, so that what that allocated for
    # good is frozen too, and what it freed goes back to the system.
    return _run(lambda: Worker(settings, backend, plugins).run(on_started=tune_for_jobs), backend.close)


def _run_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_core.scheduler import Scheduler

    plugins = _start(settings)
    backend = create_backend(plugins.manager, settings)
    return _run(lambda: Scheduler(settings, backend, plugins).run(), backend.close)


def _run_api(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_api.server import run_api

    anyio.run(run_api, settings)
    return 0


def _run_dev(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_api.app import create_app
    from bananas_api.server import serve_api
    from bananas_core.scheduler import Scheduler
    from bananas_core.worker import Worker

    plugins = _start(settings)
    backend = create_backend(plugins.manager, settings)
    worker = Worker(settings, backend, plugins)
    scheduler = Scheduler(settings, backend, plugins)
    app = create_app(settings, backend, plugins)
    logger.info("Development mode on %s: API, worker and scheduler in one process", redact_url(settings.REDIS_URL))

    async def run_all() -> None:
        async with anyio.create_task_group() as services:
            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for received in signals:
                        logger.info("Received %s", signal.Signals(received).name)
                        if worker._stopping:
                            worker.abort()
                        worker.stop()
                        scheduler.stop()

            async def run_worker_then_stop() -> None:
                await worker.run(handle_signals=False)
                scheduler.stop()
                services.cancel_scope.cancel()

            services.start_soon(stop_on_signal)
            services.start_soon(scheduler.run, False)
            services.start_soon(partial(serve_api, app, settings, install_signal_handlers=False))
            await run_worker_then_stop()

    return _run(run_all, backend.close)


def _run(main: Callable[[], Awaitable[None]], close: Callable[[], Awaitable[None]]) -> int:
    async def run_and_close() -> None:
        try:
            await main()
        finally:
            with anyio.CancelScope(shield=True):
                await close()

    anyio.run(run_and_close)
    _exit_without_abandoned_threads()
    return 0


def _exit_without_abandoned_threads() -> None:
    # Threads of sync handlers abandoned at their timeout may still run. Their jobs are
    # already recorded, and Python would wait for them at exit, so a stopped service exits now.
    from bananas_core.execution import running_threads

    if running_threads.count:
        logger.warning("Exiting with %d abandoned handler threads still running", running_threads.count)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_core.client import Client
    from bananas_core.registry import HANDLER_NAME

    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as error:
        print(f"bananas: invalid --payload {args.payload!r}: {error}; pass a JSON object such as '{{\"key\": 1}}'", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(payload, dict):
        print(f"bananas: invalid --payload {args.payload!r}: expected a JSON object such as '{{\"key\": 1}}'", file=sys.stderr)
        return EXIT_USAGE

    async def submit() -> None:
        async with Client(settings) as client:
            # A name no plugin could register gets the rule it breaks, not a list of handlers.
            if HANDLER_NAME.fullmatch(args.name) and args.name not in client.plugins.registry:
                installed = ", ".join(client.plugins.registry.names()) or "none"
                raise ConfigError(
                    f"unknown handler {args.name!r}: installed handlers are {installed}; "
                    "install the plugin that provides it"
                )
            job = await client.submit(
                args.name,
                payload,
                queue=args.queue,
                priority=args.priority,
                delay=args.delay,
                run_at=args.run_at,
                max_retries=args.max_retries,
                timeout=args.timeout,
                unique_key=args.unique_key,
            )
            print(job.model_dump_json(indent=2) if args.json else job.id)

    anyio.run(submit)
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_core.client import Client

    async def show() -> None:
        async with Client(settings) as client:
            job = await client.get_job(args.job_id)
        if args.json:
            print(job.model_dump_json(indent=2))
            return
        print(f"id:        {job.id}")
        print(f"name:      {job.name}")
        print(f"status:    {job.status.value}")
        print(f"priority:  {job.priority.value}")
        print(f"attempts:  {job.attempts} (retries {job.retries} of {job.max_retries})")
        if job.result is not None:
            print(f"result:    {json.dumps(job.result)}")
        if job.error is not None:
            print(f"error:     {job.error.type}: {job.error.message}")

    anyio.run(show)
    return 0


def _plugins(settings: Settings, args: argparse.Namespace) -> int:
    plugins = load_configured_plugins(settings)
    if args.json:
        print(json.dumps([info.__dict__ for info in plugins.infos], indent=2))
        return 0
    for info in plugins.infos:
        print(f"{info.name} ({origin(info.distribution, info.version)})")
        print(f"  handlers: {', '.join(info.handlers) or 'none'}")
        print(f"  hooks:    {', '.join(info.hooks) or 'none'}")
    return 0


# Commands that read and control jobs through bananas_core.client.Client.


def _add_job_commands(commands: Any) -> None:
    json_help = "print the result as JSON"

    listing = commands.add_parser("list", help="list jobs of a queue, one page at a time")
    listing.add_argument("--queue", help="queue to list (default: the QUEUE setting)")
    listing.add_argument("--status", choices=[status.value for status in JobStatus])
    listing.add_argument("--name", help="only jobs of this handler name")
    listing.add_argument("--cursor", help="next_cursor printed by the previous page")
    listing.add_argument("--limit", type=int, default=100, help="jobs per page, 1 to 1000 (default 100)")
    listing.add_argument("--json", action="store_true", help=json_help)
    listing.set_defaults(handler=_list)

    queues = commands.add_parser("queues", help="count the jobs in each place of every queue")
    queues.add_argument("--json", action="store_true", help=json_help)
    queues.set_defaults(handler=_queues)

    workers = commands.add_parser("workers", help="list live workers")
    workers.add_argument("--json", action="store_true", help=json_help)
    workers.set_defaults(handler=_workers)

    cancel = commands.add_parser("cancel", help="cancel a queued job, or ask a running one to stop")
    cancel.add_argument("job_id")
    cancel.add_argument("--json", action="store_true", help=json_help)
    cancel.set_defaults(handler=_cancel)

    wait = commands.add_parser("wait", help="wait until a job is completed, dead or cancelled")
    wait.add_argument("job_id")
    wait.add_argument(
        "--timeout", type=_parse_duration, default=30.0, help=f"time to wait (default 30s): {DURATION_HELP}"
    )
    wait.add_argument("--json", action="store_true", help=json_help)
    wait.set_defaults(handler=_wait)

    dead = commands.add_parser("dead", help="retry, requeue or purge dead jobs")
    actions = dead.add_subparsers(dest="action", metavar="ACTION", required=True)
    retry = actions.add_parser("retry", help="move one dead job back to its queue")
    retry.add_argument("job_id")
    retry.add_argument("--json", action="store_true", help=json_help)
    retry.set_defaults(handler=_dead_retry)
    for action, help_text in (
        ("requeue", "move every dead job of a queue back to it"),
        ("purge", "delete every dead job of a queue"),
    ):
        sweep = actions.add_parser(action, help=help_text)
        sweep.add_argument("--queue", help="queue (default: the QUEUE setting)")
        sweep.add_argument("--name", help="only jobs of this handler name")
        sweep.add_argument("--json", action="store_true", help=json_help)
        sweep.set_defaults(handler=_dead_sweep)

    schedules = commands.add_parser("schedules", help="list, pause or resume periodic schedules")
    schedules.add_argument("--json", action="store_true", help=json_help)
    schedules.set_defaults(handler=_schedules, action="list", name=None)
    schedule_actions = schedules.add_subparsers(dest="action", metavar="ACTION")
    for action, help_text in (
        ("pause", "stop a schedule from enqueueing jobs until it is resumed"),
        ("resume", "let a paused schedule enqueue again from its next tick"),
    ):
        change = schedule_actions.add_parser(action, help=help_text)
        change.add_argument("name", help="schedule name, as 'bananas schedules' lists it")
        change.add_argument("--json", action="store_true", help=json_help)
        change.set_defaults(handler=_schedules)


def _parse_duration(text: str) -> float:
    # The API's delay and timeout fields take the same forms, so a value works in both.
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: expected ISO 8601 such as 2030-01-01T09:00:00Z"
        ) from error


def _schedules(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_core.periodic import collect_schedules, list_schedules, set_schedule_paused

    async def run(client: Any) -> None:
        schedules = collect_schedules(client.plugins.manager, settings, client.plugins.registry)
        if args.action in ("pause", "resume"):
            paused = args.action == "pause"
            states = [await set_schedule_paused(client.backend, schedules, args.name, paused)]
        else:
            states = await list_schedules(client.backend, schedules)
        if args.json:
            print(json.dumps([dataclasses.asdict(state) for state in states], indent=2, default=_iso))
            return
        for state in states:
            last = state.last_tick.isoformat() if state.last_tick else "never"
            print(f"{state.name}  {state.cron} ({state.timezone})  job {state.job}  "
                  f"{'paused' if state.paused else 'active'}  last {last}  next {state.next_tick.isoformat()}")

    return _with_client(settings, run)


def _iso(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _with_client(settings: Settings, operation: Callable[[Any], Awaitable[None]]) -> int:
    from bananas_core.client import Client

    async def run() -> None:
        async with Client(settings) as client:
            await operation(client)

    anyio.run(run)
    return 0


def _job_json(job: Any) -> str:
    return str(job.model_dump_json(indent=2, exclude={"token", "worker"}))


def _list(settings: Settings, args: argparse.Namespace) -> int:
    async def show(client: Any) -> None:
        page = await client.list_jobs(
            queue=args.queue, status=args.status, name=args.name, cursor=args.cursor, limit=args.limit
        )
        if args.json:
            jobs = [job.model_dump(mode="json", exclude={"token", "worker"}) for job in page.jobs]
            print(json.dumps({"jobs": jobs, "next_cursor": page.next_cursor}, indent=2))
            return
        for job in page.jobs:
            print(f"{job.id}  {job.status.value:<10}  {job.priority.value:<6}  {job.name}")
        if page.next_cursor:
            print(f"next page: --cursor {page.next_cursor}")

    return _with_client(settings, show)


def _queues(settings: Settings, args: argparse.Namespace) -> int:
    async def show(client: Any) -> None:
        counts = await client.all_counts()
        if args.json:
            print(json.dumps([dataclasses.asdict(each) for each in counts], indent=2))
            return
        print(f"{'queue':<20} {'high':>6} {'normal':>6} {'low':>6} {'sched':>6} {'run':>6} {'done':>6} {'dead':>6} {'cancel':>6}")
        for c in counts:
            print(f"{c.queue:<20} {c.high:>6} {c.normal:>6} {c.low:>6} {c.scheduled:>6} "
                  f"{c.processing:>6} {c.completed:>6} {c.dead:>6} {c.cancelled:>6}")

    return _with_client(settings, show)


def _workers(settings: Settings, args: argparse.Namespace) -> int:
    async def show(client: Any) -> None:
        workers = await client.workers()
        if args.json:
            print(json.dumps([dataclasses.asdict(info) for info in workers], indent=2))
            return
        for info in workers:
            seen = datetime.fromtimestamp(info.heartbeat_at / 1000, timezone.utc).isoformat()
            print(f"{info.id}  queue {info.queue}  running {info.running}/{info.concurrency}  "
                  f"last heartbeat {seen}  handlers: {', '.join(info.handlers)}")

    return _with_client(settings, show)


def _cancel(settings: Settings, args: argparse.Namespace) -> int:
    async def run(client: Any) -> None:
        outcome, job = await client.cancel(args.job_id)
        if outcome == "finished":
            raise JobConflict(f"job {job.id!r} is already {job.status.value}; nothing to cancel", job)
        if args.json:
            print(json.dumps({"outcome": outcome, "job": json.loads(_job_json(job))}, indent=2))
        elif outcome == "cancelled":
            print(f"cancelled {job.id}")
        else:
            print(f"requested cancellation of running job {job.id}")

    return _with_client(settings, run)


def _wait(settings: Settings, args: argparse.Namespace) -> int:
    async def run(client: Any) -> None:
        job = await client.wait(args.job_id, args.timeout)
        print(_job_json(job) if args.json else job.status.value)

    return _with_client(settings, run)


def _dead_retry(settings: Settings, args: argparse.Namespace) -> int:
    async def run(client: Any) -> None:
        job = await client.retry_dead(args.job_id)
        print(_job_json(job) if args.json else f"requeued {job.id}")

    return _with_client(settings, run)


def _dead_sweep(settings: Settings, args: argparse.Namespace) -> int:
    async def run(client: Any) -> None:
        if args.action == "requeue":
            count = await client.requeue_dead(queue=args.queue, name=args.name)
        else:
            count = await client.purge_dead(queue=args.queue, name=args.name)
        print(json.dumps({"count": count}) if args.json else f"{args.action}d {count} dead jobs")

    return _with_client(settings, run)
