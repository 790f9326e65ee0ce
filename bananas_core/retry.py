"""Retry policies: when a failed job runs again."""

from __future__ import annotations

import random

from bananas_core.job import Job

BACKOFF_BASE = 2.0  # seconds before the first retry; each later retry waits twice as long
# Each delay is stretched by a random factor from 1 to 1 + BACKOFF_JITTER, so jobs that failed
# together do not come back together, and no retry comes earlier than the 2, 4, 8 s schedule.
BACKOFF_JITTER = 0.1


def exponential_backoff(job: Job) -> float | bool:
    """Return the delay before the next retry (2 s, 4 s, 8 s, ... plus up to 10% jitter).

    Returns False once retries are used up: ``MAX_RETRIES=3`` gives three retries after the
    first attempt, so four runs in all.
    """
    if job.retries >= job.max_retries:
        return False
    delay = BACKOFF_BASE * 2**job.retries
    return delay * (1 + random.uniform(0, BACKOFF_JITTER))
