"""The bananas plugin entry point: registers the ``process_data`` handler."""

from __future__ import annotations

from bananas_core import HandlerRegistry, hookimpl
from bananas_data.handler import process_data
from bananas_data.payload import DataPayload


@hookimpl
def bananas_register_handlers(registry: HandlerRegistry) -> None:
    """Register ``process_data``, whose payload is checked against DataPayload at submission.

    The DATA_MAX_RECORDS limit is applied when the job runs.
    """
    registry.register("process_data", process_data, schema=DataPayload)
