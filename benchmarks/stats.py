"""Medians, spreads and percentiles of repeated measurements."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """The median of repeated measurements with their minimum and maximum."""

    median: float
    low: float
    high: float
    count: int

    @property
    def spread_percent(self) -> float:
        """Return (max - min) / median in percent: the run-to-run spread."""
        return 0.0 if self.median == 0 else 100.0 * (self.high - self.low) / abs(self.median)


def summarize(values: list[float]) -> Summary | None:
    """Return the summary of ``values``, or None when there are none."""
    if not values:
        return None
    return Summary(statistics.median(values), min(values), max(values), len(values))


def percentile(values: list[float], fraction: float) -> float:
    """Return the ``fraction`` (0..1) percentile of ``values`` by linear interpolation."""
    if not values:
        raise ValueError("percentile of an empty list")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
