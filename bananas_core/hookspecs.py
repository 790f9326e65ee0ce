"""Hook specifications: the points where plugins extend bananas.

Plugins implement these with ``from bananas_core import hookimpl``. Hook implementations may
accept fewer arguments than a spec lists, so specs grow by gaining arguments without
breaking existing plugins. Specs are grouped by phase: start-up, execution, lifecycle events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from bananas_core.backends.base import Backend
    from bananas_core.job import Job, JobError
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


# Execution


@hookspec(firstresult=True)
def bananas_retry_delay(job: Job, error: BaseException) -> float | bool | None:
    """Decide whether and when a failed job runs again.

    Called by the worker each time a handler raises or times out, except for
    PermanentError and an unknown handler name, which always go to the dead letter queue.
    ``job.retries`` is the number of retries already scheduled, and ``job.max_retries`` the
    job's limit.

    Return a number of seconds (0 or more) to retry after that delay, ``False`` to give up and
    move the job to the dead letter queue, or None to leave the decision to other plugins.
    The built-in policy retries after 2, 4, 8, ... seconds until ``max_retries`` is reached.

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
    raised PermanentError, or no installed plugin handles the job's name. Not firstresult.
    The return value is ignored.

    :param job: the job, with status dead.
    :param error: the error that ended it.
    """
