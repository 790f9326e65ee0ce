"""Garbage collector settings for a long-running worker process."""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)

# Container allocations, net of those freed, between two collections of the youngest
# generation (Python's default is 700). In a 20,000-job drain a worker kept about 16 per job
# for the collector to count, and its collections found fewer than 200 objects to free in all.
YOUNG_THRESHOLD = 10_000


def tune_for_jobs() -> None:
    """Freeze what start-up allocated and collect young objects less often.

    Modules, plugins and settings live as long as the process; frozen, they are left out of
    every later collection. Drain throughput rose from 14,900 to 16,400 jobs/s with both
    settings (``make bench``, 10 slots, 2 cores), and the worker's RSS did not change.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
    logger.debug("Froze %d start-up objects; young collection threshold %d", gc.get_freeze_count(), YOUNG_THRESHOLD)
