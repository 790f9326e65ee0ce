"""Hook specifications: the points where plugins extend bananas.

Plugins implement these with ``from bananas_core import hookimpl``. Hook implementations may
accept fewer arguments than a spec lists, so specs grow by gaining arguments without
breaking existing plugins. Specs are grouped by phase: start-up, services, execution,
lifecycle events. docs/plugins.md has a section for each spec, headed by its exact signature,
and tests/test_hookspecs_docs.py checks that the two agree.

A spec to be removed gets ``@hookspec(warn_on_impl=deprecation(...))`` from
bananas_core.deprecation, so that plugins implementing it warn with the version of removal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from bananas_core.backends.base import Backend
    from bananas_core.context import JobContext
    from bananas_core.job import Job, JobError
    from bananas_core.periodic import Schedule
    from bananas_core.registry import HandlerRegistry
    from bananas_core.settings import Settings

hookspec = pluggy.HookspecMarker("bananas")


# Start-up


@hookspec
def bananas_register_handlers(registry: HandlerRegistry) -> None:
    """Register the job handlers this plugin provides.

    Called once per process at start-up (worker, API, scheduler and CLI), after every
    plugin is loaded. Call ``registry.register(name, handler)`` for each handler. A handler
    is a function or coroutine function that receives the job's payload (a dict), and
    optionally a second argument, the ``JobContext``. Its return value, which must be JSON
    serialisable, becomes the job's result.

    The return value is ignored. Not firstresult: every plugin is called. Registering a name
    that another plugin registered stops start-up with a PluginError naming both plugins.

    :param registry: the process-wide handler registry.
    """


@hookspec(firstresult=True)
def bananas_backend(url: str, settings: Settings) -> Backend | None:
    """Create the backend that stores jobs for the URL in ``REDIS_URL``.

    Called once per process at start-up. Return a Backend instance if this plugin handles
    the URL's scheme, or None to leave it to other plugins. The built-in plugin handles
    ``redis://``, ``rediss://``, ``unix://`` and ``memory://``.

    firstresult: the first non-None value wins, and plugins registered later are asked first.

    :param url: the value of REDIS_URL.
    :param settings: all settings, for options such as KEY_PREFIX.
    """


@hookspec
def bananas_periodic_jobs(settings: Settings) -> Sequence[Schedule] | None:
    """Declare jobs that run on a cron schedule.

    Called once per scheduler process at start-up, and by anything that lists the schedules.
    Return a list of ``bananas_core.periodic.Schedule`` objects, or None for none. The
    schedulers of one queue enqueue each tick of a schedule once between them. docs/plugins.md
    gives the two cases that can enqueue a tick twice: schedulers of different queues, and a
    scheduler that dies between submitting a tick and recording it.

    Not firstresult: the lists of every plugin are joined with the schedules of the
    PERIODIC_JOBS setting. An exception or a value other than Schedule objects stops start-up
    with a PluginError naming the plugin, and two schedules with one name with a ConfigError
    naming both sources.

    :param settings: all settings, for values such as QUEUE.
    """


@hookspec
def bananas_cli_commands(subparsers: Any) -> None:
    """Add commands to the ``bananas`` command line.

    Called once when the ``bananas`` command builds its argument parser, before it parses
    the arguments. Call ``subparsers.add_parser(name, help=...)`` for each command, add its
    arguments, and set ``parser.set_defaults(handler=function)``, where ``function(settings,
    args)`` runs the command and returns its exit status (None counts as 0).

    The return value is ignored. Not firstresult: every plugin is called. A command name that
    bananas or another plugin already uses, or an exception, stops the command with a
    PluginError naming the plugin.

    :param subparsers: the argparse sub-command collection; only ``add_parser`` may be used.
    """


# Services: start-up and shutdown of the long-running processes, and the API's routes.


@hookspec
def bananas_worker_startup(worker: Any) -> None:
    """Prepare a worker before it claims its first job, for example open a connection pool.

    Called once in each worker process, after its backend is created and before the first
    claim. May be a coroutine function. The return value is ignored. Not firstresult: every
    plugin is called, the plugin registered last first. An exception stops the worker's
    start-up with a PluginError naming the plugin, because a plugin that could not start
    would fail every job.

    :param worker: the ``bananas_core.worker.Worker``; read ``worker.id``, ``worker.settings``
        and ``worker.backend``.
    """


@hookspec
def bananas_worker_shutdown(worker: Any) -> None:
    """Release what ``bananas_worker_startup`` acquired.

    Called once in each worker process after its last job finished or was returned to its
    queue, before the backend closes. It is also called when the start-up of any plugin
    failed, so it must cope with its own start-up not having run. May be a coroutine function. The return value is ignored. Not
    firstresult. An exception is logged with the plugin's name and the other plugins still
    run.

    :param worker: the ``bananas_core.worker.Worker`` that stops.
    """


@hookspec
def bananas_api_startup(app: Any) -> None:
    """Prepare the API before it serves its first request.

    Called once in each API process (and ``bananas dev``) in the application's lifespan
    start-up. May be a coroutine function. The return value is ignored. Not firstresult. An
    exception stops the API's start-up with a PluginError naming the plugin.

    :param app: the FastAPI application; ``app.state`` may hold what the plugin opens.
    """


@hookspec
def bananas_api_shutdown(app: Any) -> None:
    """Release what ``bananas_api_startup`` acquired.

    Called once in each API process in the lifespan shutdown, after the server stopped
    taking requests. It is also called when the start-up of any plugin failed, so it must
    cope with its own start-up not having run. May be a coroutine function. The return value is ignored. Not
    firstresult. An exception is logged with the plugin's name and the other plugins still
    run.

    :param app: the FastAPI application.
    """


@hookspec
def bananas_api_routes(settings: Settings) -> Any:
    """Add HTTP routes to the API.

    Called once per API process while the application is built, after the built-in routes.
    Return a ``fastapi.APIRouter``, a list of them, or None for none. Each route gets the
    API's key check (write scope). Not firstresult: the routers of every plugin are added.
    A route whose path and method a built-in or another plugin's route has, a plain
    Starlette route that the key check cannot protect, or an exception stops start-up with
    a PluginError naming the plugin.

    :param settings: all settings.
    """


# Execution


@hookspec
def bananas_wrap_job(
    job: Job, context: JobContext, call_next: Callable[[], Awaitable[Any]]
) -> Awaitable[Any]:
    """Wrap each run of a job, to time it, trace it, or change its outcome.

    Called in the worker for every run, around the handler: ``await call_next()`` runs the
    rest of the chain and the handler, with its timeout, and returns the handler's result or
    raises its error. Must be a coroutine function (``async def``). Return the job's result:
    usually what ``call_next()`` returned, or another JSON value to replace it. Raise to fail
    the run, which the retry policy then handles like a handler's error; raise
    PermanentError to fail it for good. Returning without calling ``call_next`` skips the
    handler, and calling it twice raises RuntimeError.

    Not firstresult: every implementation wraps the next, and the plugin registered last is
    the outermost. A wrapper's exception is the run's error, so a wrapper must not catch the
    cancellation that a timeout, a lost lease or a shutdown delivers (catch Exception, not
    BaseException).

    :param job: the claimed job, with status processing and ``attempts`` counting this run.
    :param context: the JobContext that the handler receives.
    :param call_next: a coroutine function that runs the next wrapper and, last, the handler.
    """


@hookspec(firstresult=True)
def bananas_retry_delay(job: Job, error: BaseException) -> float | bool | None:
    """Decide whether and when a failed job runs again.

    Called by the worker each time a handler raises or times out, except for
    PermanentError and an unknown handler name, which always go to the dead letter queue.
    ``job.retries`` is the number of retries already scheduled, and ``job.max_retries`` the
    job's limit.

    Return a number of seconds (0 or more) to retry after that delay, ``False`` to give up and
    move the job to the dead letter queue, or None to leave the decision to other plugins.
    The built-in policy applies the ``retry_policy`` that the handler registered with, or
    retries after 2, 4, 8, ... seconds until ``max_retries`` is reached.

    firstresult: the first non-None value wins, and plugins registered later are asked first,
    so any plugin overrides the built-in policy. A policy that raises is logged and the
    built-in policy decides.

    :param job: the job as it was when it failed; ``job.attempts`` counts this run.
    :param error: the exception the handler raised, or TimeoutError after ``job.timeout``.
    """


# Lifecycle events. Observers only: their return values are ignored, and an observer that
# raises is logged with its plugin and hook names while the other observers still run and the
# job goes on as if nothing happened. Each may be a function or a coroutine function.


@hookspec
def bananas_job_enqueued(job: Job) -> None:
    """Observe a job accepted into its queue or the scheduled set.

    Called in the process that submitted it (API or client) after the backend stored it.
    Not firstresult. The return value is ignored.

    :param job: the stored job, with status pending or scheduled.
    """


@hookspec
def bananas_job_started(job: Job) -> None:
    """Observe a worker starting a run of a job.

    Called in the worker right before the handler runs. Not firstresult. The return value is
    ignored.

    :param job: the leased job, with status processing and ``attempts`` counting this run.
    """


@hookspec
def bananas_job_succeeded(job: Job, result: Any) -> None:
    """Observe a job that finished and was recorded as completed.

    Called in the worker after the backend stored the result. Not firstresult. The return
    value is ignored.

    :param job: the completed job.
    :param result: the handler's return value.
    """


@hookspec
def bananas_job_failed(job: Job, error: JobError) -> None:
    """Observe a run of a job that raised or timed out.

    Called in the worker for every failed run, before the retry or dead letter decision is
    observed through ``bananas_job_retry_scheduled`` or ``bananas_job_dead``. Not firstresult.
    The return value is ignored.

    :param job: the job as it was when it failed.
    :param error: the error's type, message and trimmed traceback.
    """


@hookspec
def bananas_job_retry_scheduled(job: Job, error: JobError, delay: float) -> None:
    """Observe a failed job placed in the scheduled set for another attempt.

    Called in the worker after the backend stored the retry. Not firstresult. The return
    value is ignored.

    :param job: the job, with status scheduled and ``run_at`` set.
    :param error: the error of the failed run.
    :param delay: seconds until the retry is due.
    """


@hookspec
def bananas_job_dead(job: Job, error: JobError) -> None:
    """Observe a job moved to the dead letter queue.

    Called in the worker after the backend moved it, when retries are used up, the handler
    raised PermanentError, or no installed plugin handles the job's name. The scheduler calls
    it too when it dead-letters a poison job. Not firstresult. The return value is ignored.

    :param job: the job, with status dead.
    :param error: the error that ended it.
    """
