"""The context a handler receives as its optional second argument."""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio.from_thread

from bananas_core.job import Job

PROGRESS_MESSAGE_MAX_CHARS = 500

# The callable that the worker injects to receive progress reports, called with a fraction
# from 0 to 1 and a message or None. It may return an awaitable, which report_progress awaits.
ProgressSink = Callable[[float, "str | None"], "Awaitable[None] | None"]


class JobLogger(logging.LoggerAdapter):
    """Logger adapter that prefixes messages with ``job ID:NAME`` and adds ``job_id`` to records."""

    def process(self, msg: object, kwargs: MutableMapping[str, Any]) -> tuple[object, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("job_id", self.extra["job_id"])  # type: ignore[index]
        kwargs["extra"] = extra
        return f"job {self.extra['job_id']}:{self.extra['job_name']}: {msg}", kwargs  # type: ignore[index]


def job_logger(job: Job) -> JobLogger:
    """Return the logger a handler gets for ``job``, named ``bananas.job.<handler name>``."""
    return JobLogger(_handler_logger(job.name), {"job_id": job.id, "job_name": job.name})


@functools.lru_cache(maxsize=1024)
def _handler_logger(name: str) -> logging.Logger:
    # logging.getLogger takes a module-wide lock on every call, and a worker calls this per job.
    return logging.getLogger(f"bananas.job.{name}")


@dataclass(frozen=True)
class JobContext:
    """A running job, as its handler receives it."""

    job: Job
    logger: logging.LoggerAdapter  # prefixes every message with the job id and handler name
    # Injected by the worker. Without a sink, progress reports are dropped, and without a
    # flag, cancel_requested is always False.
    progress_sink: ProgressSink | None = None
    cancel_flag: Callable[[], bool] | None = None  # returns True once cancellation is requested

    @property
    def job_id(self) -> str:
        """The id of the running job."""
        return self.job.id

    @property
    def attempt(self) -> int:
        """The number of this run, 1 for the first."""
        return self.job.attempts

    @property
    def cancel_requested(self) -> bool:
        """Whether someone asked to cancel this job, so that a long handler can stop early.

        The worker sets the flag and cancels the run together. An async handler is cancelled at
        its next ``await``, so the flag serves sync handlers, whose thread cannot be cancelled:
        they can check it between two batches, clean up and return.
        """
        return self.cancel_flag is not None and bool(self.cancel_flag())

    async def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is, from 0.0 (started) to 1.0 (done), with an optional message.

        Raises ValueError for a fraction outside 0 to 1 or a message that is not a string.
        Messages longer than 500 characters are cut. Without a progress sink, the report is
        dropped.
        """
        fraction, message = _check_progress(fraction, message)
        if self.progress_sink is None:
            return
        outcome = self.progress_sink(fraction, message)
        if inspect.isawaitable(outcome):
            await outcome

    def report_progress_sync(self, fraction: float, message: str | None = None) -> None:
        """Report progress from a sync handler, which the worker runs in a thread.

        Does what ``report_progress`` does, on the worker's event loop. Raises RuntimeError
        when called outside a thread that anyio started, such as from a coroutine.
        """
        fraction, message = _check_progress(fraction, message)
        if self.progress_sink is None:
            return
        anyio.from_thread.run(self.report_progress, fraction, message)


def _check_progress(fraction: object, message: object) -> tuple[float, str | None]:
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not (math.isfinite(fraction) and 0 <= fraction <= 1)
    ):
        raise ValueError(f"invalid progress {fraction!r}: expected a number from 0.0 to 1.0")
    if message is not None and not isinstance(message, str):
        raise ValueError(f"invalid progress message {message!r}: expected a string or None")
    if message is not None:
        message = message[:PROGRESS_MESSAGE_MAX_CHARS]
    return float(fraction), message
