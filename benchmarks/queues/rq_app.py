"""RQ: the benchmark job, run by ``rq worker-pool``, and a producer."""

from __future__ import annotations

import os
from typing import Any

from redis import Redis
from rq import Queue

from benchmarks.probe import record_run

QUEUE_NAME = "bench"


def bench_job(payload: dict[str, Any]) -> None:
    record_run(payload)


class Producer:
    """Submits benchmark jobs through one ``rq.Queue`` (blocking calls, one at a time)."""

    bulk_api = "Queue.enqueue_many"

    async def open(self) -> None:
        self.connection = Redis.from_url(os.environ["BENCH_REDIS_URL"])
        self.queue = Queue(QUEUE_NAME, connection=self.connection)

    async def submit(self, payload: dict[str, Any]) -> None:
        self.queue.enqueue(bench_job, payload)

    async def submit_many(self, payloads: list[dict[str, Any]]) -> None:
        self.queue.enqueue_many([Queue.prepare_data(bench_job, (payload,)) for payload in payloads])

    async def close(self) -> None:
        self.connection.close()
