"""Named retry policies that a handler chooses with ``registry.register(..., retry_policy=NAME)``.

A policy decides the delay before the next run of a failed job from ``job.retries``, and
gives up once ``job.max_retries`` retries were scheduled. A name may carry the base delay
after a colon, such as ``fixed:30s`` or ``linear:1m``:

============== =========================================== ==========================
Name           Delay before retry n (n = 1, 2, 3, ...)     Default base
============== =========================================== ==========================
exponential    base * 2**(n-1), stretched by up to 10%     2 s (2, 4, 8 s, ...)
fixed          base                                        2 s
linear         base * n                                    2 s (2, 4, 6 s, ...)
none           no retry: the first failure is final        -
============== =========================================== ==========================

``exponential`` with the default base is the built-in policy of ``bananas_core.retry``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bananas_core.durations import DURATION_HELP, parse_duration
from bananas_core.job import Job
from bananas_core.retry import BACKOFF_BASE, BACKOFF_JITTER, exponential_backoff

POLICY_NAMES = ("exponential", "fixed", "linear", "none")
DEFAULT_BASE = BACKOFF_BASE  # seconds before the first retry, the same for every policy


@dataclass(frozen=True)
class RetryPolicy:
    """A named retry policy and its base delay in seconds."""

    name: str
    base: float = DEFAULT_BASE

    def delay(self, job: Job) -> float | bool:
        """Return the seconds before the next run of ``job``, or False once retries are used up."""
        if self.name == "none" or job.retries >= job.max_retries:
            return False
        if self.name == "fixed":
            return self.base
        if self.name == "linear":
            return self.base * (job.retries + 1)
        if self.base == BACKOFF_BASE:
            # The default exponential policy is the built-in one, so the two never drift apart.
            return exponential_backoff(job)
        return self.base * 2**job.retries * (1 + random.uniform(0, BACKOFF_JITTER))

    def __str__(self) -> str:
        if self.name == "none":
            return "none"
        return f"{self.name}:{self.base:g}s"


def get_policy(spec: str | RetryPolicy) -> RetryPolicy:
    """Parse a policy name such as ``exponential``, ``fixed:30s`` or ``none`` into a RetryPolicy.

    A RetryPolicy is returned unchanged. Raises ValueError naming the value and the accepted
    names, or the accepted durations when the part after the colon is invalid.
    """
    if isinstance(spec, RetryPolicy):
        return spec
    if not isinstance(spec, str):
        # ValueError, not TypeError, so that callers catch one type for every invalid spec.
        raise ValueError(  # noqa: TRY004
            f"invalid retry policy {spec!r}: expected one of {', '.join(POLICY_NAMES)}, "
            "optionally followed by ':' and a base delay such as 'fixed:30s'"
        )
    name, separator, base_text = spec.strip().partition(":")
    if name not in POLICY_NAMES:
        raise ValueError(
            f"invalid retry policy {spec!r}: expected one of {', '.join(POLICY_NAMES)}, "
            "optionally followed by ':' and a base delay such as 'fixed:30s'"
        )
    if not separator:
        return RetryPolicy(name)
    if name == "none":
        raise ValueError(f"invalid retry policy {spec!r}: 'none' takes no base delay")
    try:
        base = parse_duration(base_text)
    except ValueError:
        raise ValueError(
            f"invalid retry policy {spec!r}: the base delay after ':' must be {DURATION_HELP}"
        ) from None
    return RetryPolicy(name, base)
