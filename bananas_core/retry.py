"""Retry policies: when a failed job runs again."""

from __future__ import annotations

from bananas_core.job import Job

BACKOFF_BASE = 2.0  # seconds before the first retry; each later retry waits twice as long


def exponential_backoff(job: Job) -> float | bool:
    """Return the delay before the next retry (2 s, 4 s, 8 s, ...), or False once retries are used up.

    ``MAX_RETRIES=3`` gives three retries after the first attempt, so four runs in all.
    """
    if job.retries >= job.max_retries:
        return False
    return BACKOFF_BASE * 2**job.retries
