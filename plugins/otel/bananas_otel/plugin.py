"""Spans for job submissions and runs, made from bananas' lifecycle hooks.

The trace context travels in the payload under the reserved key ``_bananas_trace``, which
``inject`` adds when a job is submitted. Payload schemas never see reserved keys.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from bananas_core import Job, JobError, hookimpl

logger = logging.getLogger(__name__)

TRACE_KEY = "_bananas_trace"  # payload key holding the submitter's W3C trace context
VERSION = "0.1.0"


def inject(payload: dict[str, Any], context: otel_context.Context | None = None) -> dict[str, Any]:
    """Return a copy of ``payload`` that carries the current trace context, for submission.

    The job's spans then join the submitter's trace. Uses the globally configured
    propagator, W3C Trace Context by default.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return {**payload, TRACE_KEY: carrier}


class OtelPlugin:
    """Spans of job submissions (PRODUCER) and runs (CONSUMER), from the lifecycle hooks.

    A run's span is the current span while the handler runs, so spans the handler starts
    are its children. ``tracer_provider`` defaults to the global one.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("bananas_otel", VERSION, tracer_provider=tracer_provider)
        # Running jobs by (id, attempt): their span and the token that made it current.
        self._runs: dict[tuple[str, int], tuple[Span, object]] = {}

    @hookimpl
    def bananas_job_enqueued(self, job: Job) -> None:
        parent = _extract(job)
        with self._tracer.start_as_current_span(
            f"send {job.name}", context=parent, kind=SpanKind.PRODUCER, attributes=_attributes(job, "send")
        ):
            pass

    @hookimpl
    def bananas_job_started(self, job: Job) -> None:
        span = self._tracer.start_span(
            f"process {job.name}", context=_extract(job), kind=SpanKind.CONSUMER, attributes=_attributes(job, "process")
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        self._runs[(job.id, job.attempts)] = (span, token)

    @hookimpl
    def bananas_job_succeeded(self, job: Job) -> None:
        self._end(job, Status(StatusCode.OK), None)

    @hookimpl
    def bananas_job_failed(self, job: Job, error: JobError) -> None:
        self._end(job, Status(StatusCode.ERROR, f"{error.type}: {error.message}"), error)

    @hookimpl
    def bananas_job_retry_scheduled(self, job: Job, error: JobError, delay: float) -> None:
        attributes = {
            **_attributes(job, "settle"),
            "bananas.job.event": "retry",
            "bananas.retry.delay_seconds": delay,
            "error.type": error.type,
        }
        self._tracer.start_span(f"retry {job.name}", context=_extract(job), attributes=attributes).end()

    @hookimpl
    def bananas_job_dead(self, job: Job, error: JobError) -> None:
        attributes = {**_attributes(job, "settle"), "bananas.job.event": "dead", "error.type": error.type}
        span = self._tracer.start_span(f"dead {job.name}", context=_extract(job), attributes=attributes)
        span.set_status(Status(StatusCode.ERROR, f"{error.type}: {error.message}"))
        span.end()

    @hookimpl
    def bananas_worker_shutdown(self) -> None:
        # Runs whose end no hook reported, such as a run whose lease was lost: their spans
        # end here so the exporter still sends them.
        for (job_id, attempt), (span, _) in list(self._runs.items()):
            span.set_attribute("bananas.job.outcome", "unknown")
            span.end()
            logger.info("Ended the span of job %s attempt %d without an outcome", job_id, attempt)
        self._runs.clear()

    def _end(self, job: Job, status: Status, error: JobError | None) -> None:
        run = self._runs.pop((job.id, job.attempts), None)
        if run is None:
            return
        span, token = run
        if error is not None:
            span.add_event(
                "exception",
                {"exception.type": error.type, "exception.message": error.message, "exception.stacktrace": error.traceback},
            )
        span.set_status(status)
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]


def _extract(job: Job) -> otel_context.Context | None:
    carrier = job.payload.get(TRACE_KEY)
    if not isinstance(carrier, dict):
        return None
    return propagate.extract({str(key): str(value) for key, value in carrier.items()})


def _attributes(job: Job, operation: str) -> dict[str, Any]:
    # Names from OpenTelemetry's messaging semantic conventions, plus bananas' own.
    return {
        "messaging.system": "bananas",
        "messaging.operation.type": operation,
        "messaging.destination.name": job.queue,
        "messaging.message.id": job.id,
        "bananas.job.name": job.name,
        "bananas.job.attempt": job.attempts,
        "bananas.job.priority": job.priority.value,
    }


plugin = OtelPlugin()  # the instance the ``bananas`` entry point registers
