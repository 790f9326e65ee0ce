"""The bananas plugin entry point: registers the ``http_request`` handler."""

from __future__ import annotations

from bananas_core import HandlerRegistry, hookimpl
from bananas_http.handler import http_request
from bananas_http.payload import HttpRequest


@hookimpl
def bananas_register_handlers(registry: HandlerRegistry) -> None:
    """Register ``http_request``, whose payload is checked against HttpRequest at submission."""
    registry.register("http_request", http_request, schema=HttpRequest)
