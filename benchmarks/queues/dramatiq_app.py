"""Dramatiq: the benchmark actor on a Redis broker, for ``dramatiq``, and a producer."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.probe import record_run

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def bench_job(payload: dict[str, Any]) -> None:
    record_run(payload)


class Producer:
    """Sends benchmark messages through the module's broker (blocking calls)."""

    bulk_api = "group(...).run()"

    async def open(self) -> None:
        pass

    async def submit(self, payload: dict[str, Any]) -> None:
        bench_job.send(payload)

    async def submit_many(self, payloads: list[dict[str, Any]]) -> None:
        dramatiq.group(bench_job.message(payload) for payload in payloads).run()

    async def close(self) -> None:
        broker.close()
