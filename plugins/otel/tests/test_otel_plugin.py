"""Spans of bananas-otel, recorded with the OpenTelemetry SDK's InMemorySpanExporter."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest
from bananas_otel import TRACE_KEY, OtelPlugin, inject
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from bananas_core import JobContext, PermanentError
from bananas_core.plugins import Plugins, load_plugins
from bananas_core.testing import MemoryQueue


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def bananas_plugins(provider: TracerProvider) -> Plugins:
    """Load no installed plugin, and the OTel plugin with the test's own tracer provider."""
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(OtelPlugin(tracer_provider=provider), name="otel")
    return plugins


def spans_by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_entry_point_registers_plugin_instance() -> None:
    by_name = {entry_point.name: entry_point for entry_point in entry_points(group="bananas")}

    assert by_name["otel"].value == "bananas_otel.plugin:plugin"
    assert "otel" in [info.name for info in load_plugins().infos]


@pytest.mark.anyio
async def test_run_joins_submitter_trace(
    bananas_queue: MemoryQueue, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("test")

    def resize(payload: dict[str, Any]) -> int:
        with tracer.start_as_current_span("inside handler"):
            return int(payload["width"]) // 2

    bananas_queue.register("resize", resize)
    with tracer.start_as_current_span("request") as request_span:
        job = await bananas_queue.enqueue("resize", inject({"width": 640}))
    await bananas_queue.run_all()

    spans = spans_by_name(exporter)
    trace_id = request_span.get_span_context().trace_id
    send, process, inner = spans["send resize"], spans["process resize"], spans["inside handler"]
    assert TRACE_KEY in job.payload
    assert send.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert {send.context.trace_id, process.context.trace_id, inner.context.trace_id} == {trace_id}
    assert process.parent is not None
    assert process.parent.span_id == request_span.get_span_context().span_id
    assert inner.parent is not None
    assert inner.parent.span_id == process.context.span_id
    assert process.status.status_code is StatusCode.OK
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == job.id
    assert process.attributes["bananas.job.attempt"] == 1


@pytest.mark.anyio
async def test_failed_run_records_error(
    bananas_queue: MemoryQueue, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    def reject(payload: dict[str, Any]) -> None:
        raise PermanentError("bad width")

    bananas_queue.register("reject", reject)
    with provider.get_tracer("test").start_as_current_span("request"):
        await bananas_queue.enqueue("reject", inject({}))
    await bananas_queue.run_all()

    spans = spans_by_name(exporter)
    process, dead = spans["process reject"], spans["dead reject"]
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "PermanentError: bad width"
    assert [event.name for event in process.events] == ["exception"]
    assert dead.context.trace_id == process.context.trace_id
    assert dead.attributes is not None
    assert dead.attributes["error.type"] == "PermanentError"


@pytest.mark.anyio
async def test_each_attempt_gets_a_span(bananas_queue: MemoryQueue, exporter: InMemorySpanExporter) -> None:
    def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("try again")
        return "ok"

    bananas_queue.register("flaky", flaky, retry_policy="fixed:1s")
    await bananas_queue.enqueue("flaky", inject({}))
    await bananas_queue.run_all()
    bananas_queue.clock.advance(5)
    await bananas_queue.run_all()

    runs = [span for span in exporter.get_finished_spans() if span.name == "process flaky"]
    assert [span.attributes["bananas.job.attempt"] for span in runs if span.attributes] == [1, 2]
    assert [span.status.status_code for span in runs] == [StatusCode.ERROR, StatusCode.OK]
    assert "retry flaky" in spans_by_name(exporter)


class Resize(BaseModel):
    width: int


@pytest.mark.anyio
async def test_trace_key_passes_strict_schema(bananas_queue: MemoryQueue, exporter: InMemorySpanExporter) -> None:
    bananas_queue.register("strict", lambda payload: payload.width, schema=Resize)

    job = await bananas_queue.enqueue("strict", inject({"width": 3}))
    (ran,) = await bananas_queue.run_all()

    assert TRACE_KEY in job.payload
    assert ran.result == 3


@pytest.mark.anyio
async def test_job_without_trace_context_starts_trace(bananas_queue: MemoryQueue, exporter: InMemorySpanExporter) -> None:
    bananas_queue.register("plain", lambda payload: None)

    await bananas_queue.enqueue("plain", {})
    await bananas_queue.run_all()

    process = spans_by_name(exporter)["process plain"]
    assert process.parent is None


def test_shutdown_ends_open_spans(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    from bananas_core.job import Job, utc_now

    plugin = OtelPlugin(tracer_provider=provider)
    job = Job(id="job-1", name="lost", attempts=1, created_at=utc_now())
    plugin.bananas_job_started(job)

    plugin.bananas_worker_shutdown()

    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["bananas.job.outcome"] == "unknown"
