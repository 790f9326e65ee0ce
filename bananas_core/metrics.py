"""Job counters shared by the workers that record them and the API that exports them.

Workers batch their increments (``JobStats``) and add them to one Redis hash
(``keys.job_metrics_key``) through ``Backend.add_job_metrics`` every second, so
every API process exports the same totals whichever worker ran a job. Labels are the queue
and the handler name, never the job id, so the number of series stays bounded by the
registered handlers.
"""

from __future__ import annotations

from bisect import bisect_left
from enum import Enum

# Upper bounds in seconds of the histogram buckets. Runs go from milliseconds to the default
# JOB_TIMEOUT of 5 minutes; waits in the queue can last as long as a backlog does.
RUN_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
WAIT_SECONDS_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


class Outcome(str, Enum):
    """The outcome of one run of a job, as counted in ``bananas_jobs_total``."""

    completed = "completed"
    retried = "retried"  # failed, and a retry is scheduled
    dead = "dead"  # failed for the last time, now in the dead letter queue
    cancelled = "cancelled"  # stopped because cancellation was requested
    lost = "lost"  # the lease was lost, so another delivery owns the job


def histogram_fields(kind: str, queue: str, name: str, seconds: float, buckets: tuple[float, ...]) -> list[str]:
    """Return the hash fields one observation increments: each bucket it falls in, and the count.

    The sum is a float and is incremented apart, under ``{kind}_sum|QUEUE|NAME``.
    """
    fields = [f"{kind}|{queue}|{name}|{bound:g}" for bound in buckets if seconds <= bound]
    fields.append(f"{kind}|{queue}|{name}|+Inf")
    fields.append(f"{kind}_count|{queue}|{name}")
    return fields


class JobStats:
    """Counter increments of one process, batched and flushed to the backend together.

    Recording a run costs no Redis round trip: a worker flushes every second, so the shared
    totals lag by at most that long. A run is counted in its histogram bucket only, and the
    cumulative bucket fields are filled in when the batch is taken, which keeps recording
    cheap on a worker that runs thousands of jobs a second.
    """

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}
        self._observations: dict[tuple[str, str, str, int], int] = {}  # (kind, queue, name, bucket)
        self._sums: dict[tuple[str, str, str], float] = {}

    def record(
        self, queue: str, name: str, outcome: Outcome, run_seconds: float | None, wait_seconds: float | None
    ) -> None:
        """Count one finished run, with its run time and, on a first attempt, its wait time."""
        self._add(f"outcome|{queue}|{name}|{outcome.value}", 1)
        if run_seconds is not None:
            self._observe("run", queue, name, run_seconds, RUN_SECONDS_BUCKETS)
        if wait_seconds is not None:
            self._observe("wait", queue, name, wait_seconds, WAIT_SECONDS_BUCKETS)

    def take(self) -> dict[str, float]:
        """Return the increments since the last call, and start a new batch."""
        for (kind, queue, name, index), count in self._observations.items():
            buckets = _BUCKETS[kind]
            # The value counts in the first bucket whose bound is not below it, and in every larger one.
            for bound in buckets[index:]:
                self._add(f"{kind}|{queue}|{name}|{bound:g}", count)
            self._add(f"{kind}|{queue}|{name}|+Inf", count)
            self._add(f"{kind}_count|{queue}|{name}", count)
        for (kind, queue, name), seconds in self._sums.items():
            self._add(f"{kind}_sum|{queue}|{name}", seconds)
        self._observations = {}
        self._sums = {}
        pending, self._pending = self._pending, {}
        return pending

    def restore(self, increments: dict[str, float]) -> None:
        """Put back increments whose flush failed, so they go with the next one."""
        for field, amount in increments.items():
            self._add(field, amount)

    def _observe(self, kind: str, queue: str, name: str, seconds: float, buckets: tuple[float, ...]) -> None:
        bucket = (kind, queue, name, bisect_left(buckets, seconds))
        self._observations[bucket] = self._observations.get(bucket, 0) + 1
        series = (kind, queue, name)
        self._sums[series] = self._sums.get(series, 0.0) + seconds

    def _add(self, field: str, amount: float) -> None:
        self._pending[field] = self._pending.get(field, 0) + amount


_BUCKETS = {"run": RUN_SECONDS_BUCKETS, "wait": WAIT_SECONDS_BUCKETS}
