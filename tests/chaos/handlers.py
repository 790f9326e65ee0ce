"""Handlers for the chaos suite. Each run leaves a trace in Redis that the tests count.

``starts`` maps a job id to the pids of the workers that started it, ``completions`` counts
the runs that reached the end of the handler, per job id.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import redis.asyncio as aioredis

from bananas_core import JobContext, hookimpl

_client: aioredis.Redis | None = None


def _redis() -> aioredis.Redis:
    global _client
    if _client is None:
        _client = aioredis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=10)
    return _client


async def chaos_work(payload: dict[str, Any], ctx: JobContext) -> int:
    """Record the start, sleep ``ms``, then count the completion."""
    prefix = os.environ["KEY_PREFIX"]
    await _redis().rpush(f"{prefix}:chaos:starts:{ctx.job_id}", os.getpid())
    await anyio.sleep(payload.get("ms", 50) / 1000)
    # Shielded, so a shutdown cannot cut between counting the run and returning from it.
    with anyio.CancelScope(shield=True):
        await _redis().hincrby(f"{prefix}:chaos:completions", ctx.job_id, 1)
    return ctx.attempt


def always_fail(payload: dict[str, Any]) -> None:
    raise RuntimeError("failing on purpose " + "x" * 200)


@hookimpl
def bananas_register_handlers(registry: Any) -> None:
    registry.register("chaos_work", chaos_work)
    registry.register("always_fail", always_fail)
