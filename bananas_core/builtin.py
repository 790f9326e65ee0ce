"""The built-in plugin: the Redis and memory backends and the default retry policy.

It is registered before every other plugin, so for firstresult hooks any installed plugin
is asked first and this one decides only when the others return None.
"""

from __future__ import annotations

from bananas_core.backends.base import Backend
from bananas_core.job import Job
from bananas_core.plugins import hookimpl
from bananas_core.registry import HandlerRegistry
from bananas_core.retry import exponential_backoff
from bananas_core.settings import Settings


class BuiltinPlugin:
    """Hook implementations of bananas itself, with the registry whose retry policies it applies."""

    def __init__(self, registry: HandlerRegistry) -> None:
        self.registry = registry

    @hookimpl
    def bananas_backend(self, url: str, settings: Settings) -> Backend | None:
        scheme = url.split("://", 1)[0]
        if scheme in ("redis", "rediss", "unix"):
            from bananas_core.backends.redis import RedisBackend

            return RedisBackend.from_url(url, prefix=settings.KEY_PREFIX, queue=settings.QUEUE)
        if scheme == "memory":
            from bananas_core.backends.memory import memory_backend

            return memory_backend(url, prefix=settings.KEY_PREFIX, queue=settings.QUEUE)
        return None

    @hookimpl
    def bananas_retry_delay(self, job: Job) -> float | bool:
        # The handler's own retry_policy, else exponential backoff. A job whose handler is not
        # installed here never reaches the retry policy: it goes to the dead letter queue.
        handler = self.registry.get(job.name)
        if handler is not None and handler.retry_policy is not None:
            return handler.retry_policy.delay(job)
        return exponential_backoff(job)
