"""Run the API with uvicorn inside the caller's event loop, alone or next to other services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator

import anyio
import uvicorn
from anyio.abc import TaskStatus
from fastapi import FastAPI

from bananas_api.app import create_app
from bananas_api.auth import check_exposure, is_loopback
from bananas_core.backends import create_backend
from bananas_core.plugins import load_configured_plugins, log_plugins
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)

_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _ApiServer(uvicorn.Server):
    """A uvicorn server that installs signal handlers only when asked, and reports readiness.

    uvicorn's own ``capture_signals`` re-raises a caught SIGINT or SIGTERM after shutdown,
    which would kill the process before the caller closes its backend. This one stops
    gracefully on the first signal, forces the exit on a second SIGINT, and returns normally.
    """

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool) -> None:
        super().__init__(config)
        self.handle_signals = handle_signals
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Python delivers signals to the main thread only, so elsewhere there is nothing to set.
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return

        original_handlers = {sig: signal.signal(sig, self.handle_exit) for sig in _HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original_handlers.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()


async def serve_api(
    app: FastAPI,
    settings: Settings,
    *,
    install_signal_handlers: bool = True,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``settings.API_HOST:API_PORT`` until stopped, in the running asyncio loop.

    With ``install_signal_handlers`` the server stops gracefully on SIGINT or SIGTERM and
    returns. Without it, signals are left to the caller, which stops the server by cancelling
    the task that awaits this function. Either way open requests get ``SHUTDOWN_GRACE``
    seconds to finish before they are cancelled.

    Reports the base URL through ``task_status``, so ``await task_group.start(...)`` returns
    once the server accepts connections. Raises OSError naming the address and the setting
    when the address cannot be bound, and ConfigError when API_HOST is not a loopback address
    while API_KEYS is empty and API_INSECURE is off.
    """
    check_exposure(settings)
    if not settings.api_keys and not is_loopback(settings.API_HOST):
        logger.warning(
            "API on %s serves without API keys because API_INSECURE is set: anyone who reaches "
            "it can submit and cancel jobs",
            settings.API_HOST,
        )
    config = uvicorn.Config(
        app,
        log_config=None,  # the application that embeds bananas configures logging
        access_log=False,  # RequestIdMiddleware logs each request at DEBUG with its id
        timeout_graceful_shutdown=settings.SHUTDOWN_GRACE,  # type: ignore[arg-type]
    )
    server = _ApiServer(config, handle_signals=install_signal_handlers)
    listener = _bind(settings.API_HOST, settings.API_PORT)
    url = _url(settings.API_HOST, listener.getsockname()[1])

    # The server runs in its own task, so cancelling the caller can ask it to shut down and
    # then wait for that, instead of interrupting it halfway through a request.
    serving = asyncio.create_task(_serve(server, listener))
    try:
        await _wait_until_started(server, serving)
        if server.started:
            logger.info("API listening on %s", url)
            task_status.started(url)
        await asyncio.shield(serving)
    except BaseException:
        if not serving.done():
            server.should_exit = True
            with anyio.CancelScope(shield=True):
                await asyncio.wait({serving})
            if serving.exception() is not None:
                logger.error("API server failed while stopping", exc_info=serving.exception())
        raise
    finally:
        listener.close()
        logger.info("API on %s stopped", url)


async def run_api(settings: Settings) -> None:
    """Run the API service until SIGINT or SIGTERM: load plugins, open the backend, serve.

    Raises PluginError or ConfigError before serving when a plugin or REDIS_URL is invalid.
    The backend is closed before this returns.
    """
    plugins = load_configured_plugins(settings)
    log_plugins(plugins)
    backend = create_backend(plugins.manager, settings)
    try:
        app = create_app(settings, backend, plugins)
        await serve_api(app, settings, install_signal_handlers=True)
    finally:
        with anyio.CancelScope(shield=True):
            await backend.close()


async def _wait_until_started(server: _ApiServer, serving: asyncio.Task[None]) -> None:
    # Returns early when serving ends first, for example because start-up failed.
    ready = asyncio.create_task(server.ready.wait())
    try:
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()


async def _serve(server: _ApiServer, listener: socket.socket) -> None:
    try:
        await server.serve(sockets=[listener])
    except SystemExit as error:
        # uvicorn exits the process when the application's lifespan start-up fails. A task
        # that raises SystemExit would stop the whole event loop, so it becomes an error here.
        raise RuntimeError(
            "API start-up failed: the application's lifespan start-up raised (see the log above)"
        ) from error


def _bind(host: str, port: int) -> socket.socket:
    # Binding here, not in uvicorn, turns "address in use" into an exception the caller can
    # report, where uvicorn would log it and exit the process.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        server = socket.create_server((host, port), family=family)
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot listen on {_url(host, port)}: {error.strerror or error}. "
            "Set API_HOST and API_PORT to a free local address",
        ) from error
    # asyncio sets TCP_NODELAY only on sockets it creates itself. Without it every response on
    # a keep-alive connection waits for the client's delayed ACK, about 40 ms on Linux.
    # Accepted connections inherit the option from the listening socket.
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server


def _url(host: str, port: int) -> str:
    if ":" in host:
        return f"http://[{host}]:{port}"
    return f"http://{host}:{port}"
