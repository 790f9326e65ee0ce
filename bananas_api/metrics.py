"""The Prometheus metrics of GET /metrics: queue state read from Redis at each scrape, the
job counters that workers store in Redis, and the API's own rejections.

Labels are queues, priorities, states, handler names and status codes, never job ids.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bananas_core.backends.base import QueueCounts, WorkerInfo
from bananas_core.metrics import RUN_SECONDS_BUCKETS, WAIT_SECONDS_BUCKETS

_STATES = ("high", "normal", "low", "scheduled", "processing", "completed", "dead", "cancelled")


class Snapshot:
    """Values one scrape read from Redis, kept until the next scrape replaces them."""

    def __init__(self) -> None:
        self.counts: list[QueueCounts] = []
        self.oldest_age: dict[tuple[str, str], float] = {}  # (queue, priority) to seconds
        self.workers: list[WorkerInfo] = []
        self.job_counters: dict[str, float] = {}


class StoredMetrics(Collector):
    """Collector that turns the last snapshot into metric families."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        snapshot = self.snapshot
        depth = GaugeMetricFamily(
            "bananas_queue_jobs",
            "Jobs in each place of a queue: the three priority lists, scheduled, processing, "
            "and the completed, dead and cancelled jobs still kept.",
            labels=["queue", "state"],
        )
        for counts in snapshot.counts:
            for state in _STATES:
                depth.add_metric([counts.queue, state], getattr(counts, state))
        yield depth

        oldest = GaugeMetricFamily(
            "bananas_queue_oldest_job_age_seconds",
            "Age since creation of the oldest pending job of each priority list; absent when empty.",
            labels=["queue", "priority"],
        )
        for (queue, priority), age in sorted(snapshot.oldest_age.items()):
            oldest.add_metric([queue, priority], age)
        yield oldest

        workers = GaugeMetricFamily(
            "bananas_workers", "Workers with a live registration, by queue.", labels=["queue"]
        )
        by_queue: dict[str, int] = defaultdict(int)
        for worker in snapshot.workers:
            by_queue[worker.queue] += 1
        for queue, count in sorted(by_queue.items()):
            workers.add_metric([queue], count)
        yield workers

        yield from _job_families(snapshot.job_counters)


def _job_families(
    counters: dict[str, float],
) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
    outcomes = CounterMetricFamily(
        "bananas_jobs",
        "Finished runs of jobs by outcome, as recorded by the workers.",
        labels=["queue", "name", "outcome"],
    )
    for field, value in sorted(counters.items()):
        kind, _, rest = field.partition("|")
        if kind == "outcome":
            queue, name, outcome = rest.split("|", 2)
            outcomes.add_metric([queue, name, outcome], value)
    yield outcomes

    for kind, buckets, help_text in (
        ("run", RUN_SECONDS_BUCKETS, "Time one run of a job took, as recorded by the workers."),
        ("wait", WAIT_SECONDS_BUCKETS, "Time a job waited in its queue before a run started."),
    ):
        family = HistogramMetricFamily(
            f"bananas_job_{kind}_seconds", help_text, labels=["queue", "name"]
        )
        series = {
            tuple(field.split("|")[1:3])
            for field in counters
            if field.startswith(f"{kind}_count|")
        }
        for queue, name in sorted(series):
            bucket_values = [
                (f"{bound:g}", counters.get(f"{kind}|{queue}|{name}|{bound:g}", 0.0))
                for bound in buckets
            ]
            bucket_values.append(("+Inf", counters.get(f"{kind}|{queue}|{name}|+Inf", 0.0)))
            family.add_metric(
                [queue, name], bucket_values, counters.get(f"{kind}_sum|{queue}|{name}", 0.0)
            )
        yield family


class ApiMetrics:
    """The metric registry of one API application."""

    def __init__(self) -> None:
        # A registry per application, so several apps in one process (tests) do not collide.
        self.registry = CollectorRegistry()
        self.stored = StoredMetrics()
        self.registry.register(self.stored)
        self.rejections = Counter(
            "bananas_api_rejections",
            "Requests the API rejected with a 4xx status, by status code.",
            labelnames=["status"],
            registry=self.registry,
        )


class RejectionCounterMiddleware:
    """ASGI middleware that counts responses with a 4xx status in ``bananas_api_rejections``."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                self.metrics.rejections.labels(status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
