"""arq: the benchmark job, the worker settings for the ``arq`` command, and a producer."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq.connections import RedisSettings, create_pool

from benchmarks.probe import record_run

REDIS_SETTINGS = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])


async def bench_job(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    record_run(payload)


class WorkerSettings:
    """Settings of the ``arq`` command; those not named here keep arq's defaults."""

    functions: ClassVar[list[Any]] = [bench_job]
    redis_settings = REDIS_SETTINGS
    max_jobs = 10


# For ``arq --custom-log-dict``: arq's CLI logs every job at INFO, and the other queues run at
# WARNING, so its loggers are set to WARNING too.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


class Producer:
    """Submits benchmark jobs through one ``ArqRedis`` pool."""

    bulk_api = None  # arq has no call that enqueues several jobs at once

    async def open(self) -> None:
        self.pool = await create_pool(REDIS_SETTINGS)

    async def submit(self, payload: dict[str, Any]) -> None:
        await self.pool.enqueue_job("bench_job", payload)

    async def close(self) -> None:
        await self.pool.aclose()
