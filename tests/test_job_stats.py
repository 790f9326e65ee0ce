"""JobStats batches histogram observations and expands them into cumulative bucket fields."""

from __future__ import annotations

import pytest

from bananas_core.metrics import (
    RUN_SECONDS_BUCKETS,
    WAIT_SECONDS_BUCKETS,
    JobStats,
    Outcome,
    histogram_fields,
)

# Values below, on and above bucket bounds, and beyond the largest bound.
RUN_VALUES = [0.0, 0.004, 0.01, 0.0100001, 0.3, 5.0, 299.9, 900.0, 12_000.0]
WAIT_VALUES = [0.0, 0.01, 0.7, 3600.0, 86_400.0]


def expected_increments(observations: list[tuple[str, str, float | None, float | None]]) -> dict[str, float]:
    expected: dict[str, float] = {}
    for queue, name, run, wait in observations:
        key = f"outcome|{queue}|{name}|completed"
        expected[key] = expected.get(key, 0) + 1
        for kind, seconds, buckets in (("run", run, RUN_SECONDS_BUCKETS), ("wait", wait, WAIT_SECONDS_BUCKETS)):
            if seconds is None:
                continue
            for field in histogram_fields(kind, queue, name, seconds, buckets):
                expected[field] = expected.get(field, 0) + 1
            expected[f"{kind}_sum|{queue}|{name}"] = expected.get(f"{kind}_sum|{queue}|{name}", 0) + seconds
    return expected


def test_take_matches_cumulative_fields() -> None:
    observations = [
        (queue, name, run, wait)
        for queue in ("default", "mail")
        for name in ("echo", "send")
        for run in RUN_VALUES
        for wait in [*WAIT_VALUES, None]
    ]
    stats = JobStats()
    for queue, name, run, wait in observations:
        stats.record(queue, name, Outcome.completed, run, wait)

    increments = stats.take()

    expected = expected_increments(observations)
    assert increments.keys() == expected.keys()
    for field, amount in expected.items():
        assert increments[field] == pytest.approx(amount), field
    assert stats.take() == {}


def test_restored_increments_join_the_next_batch() -> None:
    stats = JobStats()
    stats.record("default", "echo", Outcome.retried, 0.02, None)
    first = stats.take()
    stats.restore(first)
    stats.record("default", "echo", Outcome.retried, 0.02, None)

    second = stats.take()

    assert second["outcome|default|echo|retried"] == 2
    assert second["run|default|echo|0.05"] == 2
    assert second["run_sum|default|echo"] == pytest.approx(0.04)
