"""Celery: the benchmark task on a Redis broker, run by ``celery worker``, and a producer."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, group

from benchmarks.probe import record_run

# A broker and no result backend: the minimal Celery set-up on Redis.
app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
# Celery 5 warns at start-up unless this retry behaviour is chosen explicitly; True is its default.
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench_job")
def bench_job(payload: dict[str, Any]) -> None:
    record_run(payload)


class Producer:
    """Sends benchmark tasks through the module's app (blocking calls)."""

    bulk_api = "group(...).apply_async()"

    async def open(self) -> None:
        pass

    async def submit(self, payload: dict[str, Any]) -> None:
        bench_job.delay(payload)

    async def submit_many(self, payloads: list[dict[str, Any]]) -> None:
        group(bench_job.s(payload) for payload in payloads).apply_async()

    async def close(self) -> None:
        app.close()
