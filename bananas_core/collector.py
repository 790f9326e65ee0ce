"""Memory settings for a long-running worker process: the garbage collector and the heap."""

from __future__ import annotations

import ctypes
import gc
import logging
import os

logger = logging.getLogger(__name__)

# Container allocations, net of those freed, between two collections of the youngest
# generation (Python's default is 700). In a 20,000-job drain a worker kept about 16 per job
# for the collector to count, and its collections found fewer than 200 objects to free in all.
YOUNG_THRESHOLD = 10_000


def tune_for_jobs() -> None:
    """Freeze what start-up allocated, collect young objects less often, and trim the heap.

    Call it once start-up is over: modules, plugins, settings and connections live as long as
    the process, and frozen, they are left out of every later collection. Drain throughput
    rose from 14,900 to 16,400 jobs/s with the two collector settings (``make bench``, 10
    slots, 2 cores), and the worker's RSS did not change.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
    logger.debug("Froze %d start-up objects; young collection threshold %d", gc.get_freeze_count(), YOUNG_THRESHOLD)
    release_free_heap()


def release_free_heap() -> bool:
    """Give the heap pages that no allocation uses back to the operating system.

    Start-up frees memory it needed only once, such as the files read while importing, but
    the C allocator keeps the freed pages. glibc's ``malloc_trim`` returns them: an idle
    worker's RSS fell from 47.8 to 46.5 MiB in the benchmark's environment.
    Returns False where the C library has no ``malloc_trim`` (musl, macOS).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    before = _resident_kib()
    trim(0)
    after = _resident_kib()
    if before is not None and after is not None:
        logger.debug("Returned %d KiB of free heap to the system", before - after)
    return True


def _malloc_trim() -> ctypes._CFuncPtr | None:
    # The symbols already loaded into the process include the C library's: no search needed.
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def _resident_kib() -> int | None:
    """Return this process's resident set size in KiB, as /proc gives it."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024
