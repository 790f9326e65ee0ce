"""Huey: the benchmark task on ``RedisHuey``, run by ``huey_consumer``, and a producer."""

from __future__ import annotations

import os
from typing import Any

from huey import RedisHuey

from benchmarks.probe import record_run

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"])


@huey.task()
def bench_job(payload: dict[str, Any]) -> None:
    record_run(payload)


class Producer:
    """Enqueues benchmark tasks through the module's ``RedisHuey`` (blocking calls)."""

    bulk_api = "task.map()"

    async def open(self) -> None:
        pass

    async def submit(self, payload: dict[str, Any]) -> None:
        bench_job(payload)

    async def submit_many(self, payloads: list[dict[str, Any]]) -> None:
        bench_job.map(payloads)

    async def close(self) -> None:
        pass
