"""taskiq: the benchmark task on the taskiq-redis stream broker, and a producer."""

from __future__ import annotations

import os
from typing import Any

from taskiq_redis import RedisStreamBroker

from benchmarks.probe import record_run

# The broker the taskiq-redis README puts first; it acknowledges messages, as bananas leases them.
broker = RedisStreamBroker(url=os.environ["BENCH_REDIS_URL"])


@broker.task(task_name="bench_job")
async def bench_job(payload: dict[str, Any]) -> None:
    record_run(payload)


class Producer:
    """Sends benchmark tasks through the module's broker."""

    bulk_api = None  # taskiq has no call that sends several tasks at once

    async def open(self) -> None:
        await broker.startup()

    async def submit(self, payload: dict[str, Any]) -> None:
        await bench_job.kiq(payload)

    async def close(self) -> None:
        await broker.shutdown()
