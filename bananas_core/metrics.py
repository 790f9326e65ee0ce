"""Job counters shared by the workers that record them and the API that exports them.

Workers batch their increments (``JobStats``) and add them to one Redis hash
(``keys.job_metrics_key``) through ``Backend.add_job_metrics`` every second, so
every API process exports the same totals whichever worker ran a job. Labels are the queue
and the handler name, never the job id, so the number of series stays bounded by the
registered handlers.
"""

from __future__ import annotations

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
    totals lag by at most that long.
    """

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}

    def record(
        self, queue: str, name: str, outcome: Outcome, run_seconds: float | None, wait_seconds: float | None
    ) -> None:
        """Count one finished run, with its run time and, on a first attempt, its wait time."""
        self._add(f"outcome|{queue}|{name}|{outcome.value}", 1)
        for kind, seconds, buckets in (
            ("run", run_seconds, RUN_SECONDS_BUCKETS),
            ("wait", wait_seconds, WAIT_SECONDS_BUCKETS),
        ):
            if seconds is None:
                continue
            for field in histogram_fields(kind, queue, name, seconds, buckets):
                self._add(field, 1)
            self._add(f"{kind}_sum|{queue}|{name}", seconds)

    def take(self) -> dict[str, float]:
        """Return the increments since the last call, and start a new batch."""
        pending, self._pending = self._pending, {}
        return pending

    def restore(self, increments: dict[str, float]) -> None:
        """Put back increments whose flush failed, so they go with the next one."""
        for field, amount in increments.items():
            self._add(field, amount)

    def _add(self, field: str, amount: float) -> None:
        self._pending[field] = self._pending.get(field, 0) + amount
