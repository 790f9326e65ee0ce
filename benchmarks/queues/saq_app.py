"""SAQ: the benchmark job, the settings for the ``saq`` command, and a producer."""

from __future__ import annotations

import os
from typing import Any

from saq import Queue

from benchmarks.probe import record_run

queue = Queue.from_url(os.environ["BENCH_REDIS_URL"], name="bench")


async def bench_job(ctx: dict[str, Any], *, payload: dict[str, Any]) -> None:
    record_run(payload)


# Read by ``saq benchmarks.queues.saq_app.settings``.
settings = {"queue": queue, "functions": [bench_job], "concurrency": 10}


class Producer:
    """Submits benchmark jobs through the module's ``Queue``."""

    # Queue.map enqueues many jobs but then waits for all their results, so it is no enqueue API.
    bulk_api = None

    async def open(self) -> None:
        await queue.connect()

    async def submit(self, payload: dict[str, Any]) -> None:
        await queue.enqueue("bench_job", payload=payload)

    async def close(self) -> None:
        await queue.disconnect()
