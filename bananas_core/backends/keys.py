"""Every Redis key name bananas uses, built in one place.

All keys of one queue share the hash tag ``{queue}``, so that every Lua script touches keys
of one cluster slot and the same layout runs on Redis Cluster and Valkey.
"""

from __future__ import annotations

from dataclasses import dataclass

from bananas_core.job import Priority

# Each enqueue pushes a token to the wake-up list and trims it to this many, because a
# token only needs to wake an idle worker. A worker that finds more work than it can take
# pushes a token of its own, so no waiting job depends on a token that was trimmed.
WAKEUP_TOKENS_MAX = 64


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one named queue under a prefix, such as ``bananas:{default}:high``."""

    prefix: str
    queue: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}"

    @property
    def high(self) -> str:
        return f"{self.base}:high"

    @property
    def normal(self) -> str:
        return f"{self.base}:normal"

    @property
    def low(self) -> str:
        return f"{self.base}:low"

    @property
    def scheduled(self) -> str:
        """Sorted set of job ids scored by the time (ms) they are due: delays and retries."""
        return f"{self.base}:scheduled"

    @property
    def processing(self) -> str:
        """Sorted set of running job ids scored by their lease deadline (ms)."""
        return f"{self.base}:processing"

    @property
    def leases(self) -> str:
        """Hash of running job id to its delivery token, checked by every completion."""
        return f"{self.base}:leases"

    @property
    def completed(self) -> str:
        """Sorted set of completed job ids scored by finish time (ms), for retention."""
        return f"{self.base}:completed"

    @property
    def dead(self) -> str:
        """Dead letter queue: sorted set of job ids scored by the time (ms) they died."""
        return f"{self.base}:dead"

    @property
    def jobs(self) -> str:
        """Hash of job id to its JSON record."""
        return f"{self.base}:jobs"

    @property
    def wakeup(self) -> str:
        """List that idle workers block on, so a new job starts without a poll interval."""
        return f"{self.base}:wakeup"

    @property
    def priority_lists(self) -> list[str]:
        """The three priority lists, highest first: the order a worker takes jobs in."""
        return [self.high, self.normal, self.low]

    def for_priority(self, priority: Priority) -> str:
        """Return the list key of a priority."""
        return f"{self.base}:{priority.value}"


def queues_key(prefix: str) -> str:
    """Return the key of the set of queue names in use, read by lookups across queues."""
    return f"{prefix}:queues"
