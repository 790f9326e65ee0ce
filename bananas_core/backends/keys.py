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

    def interrupt(self, worker: str) -> str:
        """List that one idle worker blocks on besides ``wakeup``: a token here ends its wait."""
        return f"{self.base}:interrupt:{worker}"

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


# Keys of one queue that the API's control operations add. They share the queue's hash tag,
# so the scripts that cancel, retry or submit touch one cluster slot.


def cancelled_key(prefix: str, queue: str) -> str:
    """Return the sorted set of cancelled job ids scored by cancel time (ms), for retention."""
    return f"{QueueKeys(prefix, queue).base}:cancelled"


def cancel_requests_key(prefix: str, queue: str) -> str:
    """Return the hash of running job id to the time (ms) a caller asked to cancel it.

    The worker reads it to stop a running job; an entry outlives the job only until the job
    finishes or is purged.
    """
    return f"{QueueKeys(prefix, queue).base}:cancel_requests"


def idempotency_key(prefix: str, queue: str, unique_key: str) -> str:
    """Return the string key that maps a submission's idempotency key to its job id.

    It expires after IDEMPOTENCY_WINDOW, so a repeated submission inside the window returns
    the first job and one after it creates a new job.
    """
    return f"{QueueKeys(prefix, queue).base}:idempotency:{unique_key}"


def finished_channel(prefix: str, queue: str) -> str:
    """Return the pub/sub channel that carries the id of each job that reached a final state.

    The API's wait endpoint listens on it. Channels are not keys, so scripts may publish to it
    without listing it in KEYS.
    """
    return f"{QueueKeys(prefix, queue).base}:finished"


# Keys shared by every queue under a prefix. Their hash tag starts with "@", which queue
# names cannot contain, so they never collide with the keys of a queue.


def workers_key(prefix: str) -> str:
    """Return the sorted set of worker ids scored by their last heartbeat (ms)."""
    return f"{prefix}:{{@workers}}:ids"


def worker_info_key(prefix: str, worker_id: str) -> str:
    """Return the string key holding one worker's JSON description; it expires with its TTL."""
    return f"{prefix}:{{@workers}}:info:{worker_id}"


def job_metrics_key(prefix: str) -> str:
    """Return the hash of job counters that workers increment and GET /metrics exports.

    Fields are ``outcome|QUEUE|NAME|OUTCOME`` for finished runs, and for the run and wait time
    histograms ``run|QUEUE|NAME|LE``, ``run_sum|QUEUE|NAME`` and ``run_count|QUEUE|NAME``
    (``wait`` likewise), where LE is a bucket's upper bound in seconds or ``+Inf``.
    """
    return f"{prefix}:{{@metrics}}:jobs"


def rate_limit_key(prefix: str, client_id: str) -> str:
    """Return the string key holding one API client's GCRA theoretical arrival time (ms)."""
    return f"{prefix}:{{@ratelimit}}:{client_id}"
