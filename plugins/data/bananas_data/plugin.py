"""The bananas plugin entry point: registers the ``process_data`` handler."""

from __future__ import annotations

from bananas_core import HandlerRegistry, hookimpl
from bananas_data.handler import process_data


@hookimpl
def bananas_register_handlers(registry: HandlerRegistry) -> None:
    """Register ``process_data``."""
    registry.register("process_data", process_data)
