"""The bananas plugin entry point: registers the ``send_email`` handler."""

from __future__ import annotations

from bananas_core import HandlerRegistry, hookimpl
from bananas_email.handler import send_email
from bananas_email.payload import EmailPayload


@hookimpl
def bananas_register_handlers(registry: HandlerRegistry) -> None:
    """Register ``send_email``, whose payload is checked against EmailPayload at submission."""
    registry.register("send_email", send_email, schema=EmailPayload)
