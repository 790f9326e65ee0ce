"""Running one handler call: sync or async, with a timeout, turned into a result or an error."""

from __future__ import annotations

import json
import threading
import traceback
from functools import partial
from typing import Any

import anyio

from bananas_core.context import JobContext
from bananas_core.errors import PermanentError
from bananas_core.isolation import HandlerFailed, run_in_process
from bananas_core.job import Job, JobError
from bananas_core.registry import Handler

TRACEBACK_MAX_CHARS = 4000
MESSAGE_MAX_CHARS = 2000

# allow_nan=False: NaN and infinity are not JSON, and readers of the result would fail. Built
# once, because json.dumps builds a new encoder per call when given options.
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


class JobTimeout(Exception):
    """Raised when a run exceeds its job's timeout."""


class UnknownHandler(PermanentError):
    """Raised when no installed plugin handles a job's name."""


class InvalidResult(PermanentError):
    """Raised when a handler returns a value that is not JSON serialisable."""


async def run_handler(
    handler: Handler, job: Job, context: JobContext | None, limiter: anyio.CapacityLimiter
) -> Any:
    """Call ``handler`` with the job's payload and return its JSON-serialisable result.

    Async handlers run on the event loop and are cancelled at the timeout. Sync handlers run
    in a worker thread from ``limiter``, and handlers registered with ``isolation="process"``
    in a child process that is killed at the timeout. Raises JobTimeout after ``job.timeout``
    seconds. ``context`` may be None only for a handler that takes no context and runs in this
    process.
    """
    if handler.isolation != "process":
        # A schema turns the payload into its model here; an isolated child does it itself.
        payload = handler.prepare_payload(job.payload)
        arguments = (payload, context) if handler.takes_context else (payload,)

    with anyio.move_on_after(job.timeout) as scope:
        if handler.isolation == "process":
            if context is None:
                raise TypeError(f"handler {handler.name!r} runs in a child process, which needs the job's context")
            result = await run_in_process(handler, context)
        elif handler.is_async:
            result = await handler.function(*arguments)
        else:
            # NOTE: a thread cannot be stopped. At the timeout the slot and its limiter token are
            # freed and the thread is abandoned, running on until the function returns; use
            # isolation="process" for handlers that must really stop.
            result = await anyio.to_thread.run_sync(
                partial(_call_in_thread, handler.function, *arguments),
                abandon_on_cancel=True,
                limiter=limiter,
            )
    if scope.cancelled_caught:
        raise JobTimeout(f"job {job.id} ({job.name}) exceeded its timeout of {job.timeout:g}s")

    encode_result(result, f"handler {job.name!r}")
    return result


def encode_result(result: Any, source: str) -> str:
    """Return ``result`` as the JSON the backend stores, or '' for None.

    Raises InvalidResult naming ``source`` (what returned the value) when it is not JSON.
    """
    if result is None:
        return ""
    try:
        return _STRICT_JSON.encode(result)
    except (TypeError, ValueError) as error:
        raise InvalidResult(
            f"{source} returned {type(result).__name__}, which is not JSON serialisable "
            f"({error}); return a dict, list, str, finite number, bool or None"
        ) from error


class _RunningThreads:
    """Count of sync handler calls running in threads, including abandoned ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __enter__(self) -> None:
        with self._lock:
            self._count += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count


running_threads = _RunningThreads()


def _call_in_thread(function: Any, *arguments: Any) -> Any:
    with running_threads:
        return function(*arguments)


def describe_error(error: BaseException) -> JobError:
    """Summarise an exception as a JobError with a trimmed traceback."""
    if isinstance(error, HandlerFailed):
        # The error happened in a child process: keep its type and traceback, not the relay's.
        return JobError(
            type=error.type_name,
            message=str(error)[:MESSAGE_MAX_CHARS],
            traceback=_trim(error.traceback),
        )
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return JobError(
        type=type(error).__name__,
        message=str(error)[:MESSAGE_MAX_CHARS],
        traceback=_trim(text),
    )


def _trim(text: str) -> str:
    # The end of a traceback names the failing line, so that is the part kept.
    if len(text) > TRACEBACK_MAX_CHARS:
        return "...\n" + text[-TRACEBACK_MAX_CHARS:]
    return text
