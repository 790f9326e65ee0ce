"""The ``bananas`` command: services (api, worker, scheduler, dev) and job commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio

from bananas_core import __version__
from bananas_core.backends import create_backend
from bananas_core.errors import BackendError, ConfigError, JobNotFound, PluginError
from bananas_core.plugins import Plugins, load_plugins, log_plugins
from bananas_core.settings import Settings, load_settings, redact_url

logger = logging.getLogger("bananas.cli")

EXIT_USAGE = 2  # invalid arguments or settings, as argparse uses
EXIT_PLUGIN = 3  # a plugin failed to load or conflicts with another
EXIT_NOT_FOUND = 4  # no job has the requested id
EXIT_BACKEND = 5  # the backend (Redis) is unreachable


def main(argv: list[str] | None = None) -> None:
    """Run the command line and exit with its status."""
    parser = _parser()
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

    _configure_logging(settings.LOG_LEVEL)
    try:
        sys.exit(args.handler(settings, args) or 0)
    except PluginError as error:
        print(f"bananas: plugin error: {error}", file=sys.stderr)
        sys.exit(EXIT_PLUGIN)
    except ConfigError as error:
        print(f"bananas: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except JobNotFound as error:
        print(f"bananas: {error}", file=sys.stderr)
        sys.exit(EXIT_NOT_FOUND)
    except BackendError as error:
        print(f"bananas: {error}", file=sys.stderr)
        sys.exit(EXIT_BACKEND)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    enqueue.add_argument("--delay", type=float, default=0.0, help="seconds before the job is due")
    enqueue.add_argument("--json", action="store_true", help="print the whole job as JSON")
    enqueue.set_defaults(handler=_enqueue)

    status = commands.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print the whole job as JSON")
    status.set_defaults(handler=_status)

    plugins = commands.add_parser("plugins", help="list installed plugins and their handlers")
    plugins.add_argument("--json", action="store_true", help="print as JSON")
    plugins.set_defaults(handler=_plugins)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _start(settings: Settings) -> Plugins:
    plugins = load_plugins(settings.plugin_modules)
    log_plugins(plugins)
    return plugins


def _run_worker(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_core.worker import Worker

    plugins = _start(settings)
    backend = create_backend(plugins.manager, settings)
    return _run(lambda: Worker(settings, backend, plugins).run(), backend.close)


def _run_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_core.scheduler import Scheduler

    plugins = _start(settings)
    backend = create_backend(plugins.manager, settings)
    return _run(lambda: Scheduler(settings, backend).run(), backend.close)


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
    scheduler = Scheduler(settings, backend)
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
    return 0


def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from bananas_core.client import Client

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
            if args.name not in client.plugins.registry:
                installed = ", ".join(client.plugins.registry.names()) or "none"
                raise ConfigError(
                    f"unknown handler {args.name!r}: installed handlers are {installed}; "
                    "install the plugin that provides it"
                )
            job = await client.submit(args.name, payload, priority=args.priority, delay=args.delay)
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
    plugins = load_plugins(settings.plugin_modules)
    if args.json:
        print(json.dumps([info.__dict__ for info in plugins.infos], indent=2))
        return 0
    for info in plugins.infos:
        print(f"{info.name} ({info.distribution} {info.version})")
        print(f"  handlers: {', '.join(info.handlers) or 'none'}")
        print(f"  hooks:    {', '.join(info.hooks) or 'none'}")
    return 0
