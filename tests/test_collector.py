"""Memory settings of the worker process: the garbage collector and the heap."""

from __future__ import annotations

import gc
import os
import platform
from collections.abc import Iterator

import pytest

from bananas_core.collector import YOUNG_THRESHOLD, release_free_heap, tune_for_jobs


def is_collected(target: object) -> bool:
    """Return True if ``target`` is in a generation that collections walk (not frozen)."""
    return any(item is target for generation in range(3) for item in gc.get_objects(generation))


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_freezes_startup_objects(restored_collector: None) -> None:
    startup_object = {"kept": ["for the whole process"]}
    assert is_collected(startup_object)

    tune_for_jobs()

    assert not is_collected(startup_object)
    assert gc.get_freeze_count() > 0


def test_tune_raises_young_threshold_only(restored_collector: None) -> None:
    _, middle, oldest = gc.get_threshold()

    tune_for_jobs()

    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, oldest)


def resident_kib() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or platform.libc_ver()[0] != "glibc", reason="glibc on Linux")
def test_release_free_heap_returns_freed_pages() -> None:
    # 2 KiB blocks come from the C heap, not Python's small-object arenas. Every hundredth
    # stays, so the freed blocks lie between live ones, where glibc does not trim by itself.
    blocks = [bytes(2048) for _ in range(20_000)]
    live_blocks = blocks[::100]
    del blocks
    freed = resident_kib()

    assert release_free_heap() is True

    assert freed - resident_kib() > 10_000
    assert len(live_blocks) == 200
