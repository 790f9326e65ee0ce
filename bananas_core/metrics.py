"""Job counters shared by the workers that record them and the API that exports them.

Workers add to one Redis hash (``keys.job_metrics_key``) through ``Backend.record_job``, so
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
    """How one run of a job ended, as counted in ``bananas_jobs_total``."""

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
