"""Backends store jobs; the scheme of REDIS_URL chooses one through the ``bananas_backend`` hook."""

from __future__ import annotations

import pluggy

from bananas_core.backends.base import Backend, QueueCounts
from bananas_core.errors import ConfigError
from bananas_core.settings import Settings

__all__ = ["Backend", "QueueCounts", "create_backend"]


def create_backend(manager: pluggy.PluginManager, settings: Settings) -> Backend:
    """Ask the plugins for the backend of ``settings.REDIS_URL``. Raises ConfigError if none fits."""
    backend = manager.hook.bananas_backend(url=settings.REDIS_URL, settings=settings)
    if backend is None:
        raise ConfigError(
            f"invalid REDIS_URL={settings.REDIS_URL!r}: no installed plugin provides a backend "
            "for this scheme; use redis://, rediss://, unix:// or memory://"
        )
    return backend
