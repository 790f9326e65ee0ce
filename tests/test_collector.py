"""Garbage collector settings of the worker process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bananas_core.collector import YOUNG_THRESHOLD, tune_for_jobs


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
