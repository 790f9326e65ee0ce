"""bananas: the benchmark job as a plugin module, and a producer on ``bananas_core.Client``.

Workers load this module through ``PLUGINS=benchmarks.queues.bananas_app``; the producer reads
REDIS_URL, KEY_PREFIX and PLUGINS from the environment like every bananas service.
"""

from __future__ import annotations

from typing import Any

from bananas_core import hookimpl
from bananas_core.client import Client, JobSpec
from bananas_core.settings import load_settings
from benchmarks.probe import record_run

JOB_NAME = "bench_job"


async def bench_job(payload: dict[str, Any]) -> None:
    # An async handler runs on the worker's event loop; a sync one would go through a thread.
    record_run(payload)


@hookimpl
def bananas_register_handlers(registry: Any) -> None:
    registry.register(JOB_NAME, bench_job)


class Producer:
    """Submits benchmark jobs through one ``Client``, as an application would."""

    bulk_api = "Client.submit_batch"

    async def open(self) -> None:
        self.client = Client(load_settings())

    async def submit(self, payload: dict[str, Any]) -> None:
        await self.client.submit(JOB_NAME, payload)

    async def submit_many(self, payloads: list[dict[str, Any]]) -> None:
        # One batch contains at most MAX_BATCH_JOBS jobs (100 by default), so larger counts are
        # sent as consecutive batches.
        size = self.client.settings.MAX_BATCH_JOBS
        for start in range(0, len(payloads), size):
            specs = [JobSpec(JOB_NAME, payload) for payload in payloads[start : start + size]]
            await self.client.submit_batch(specs)

    async def close(self) -> None:
        await self.client.__aexit__(None, None, None)
